//! `Application::build` binds everything a node serves; `run_until_stopped` runs it until the
//! shutdown future resolves, then drains within the grace period.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use carebell_dispatch::{Dispatcher, DispatcherConfig, Hub};
use carebell_gateway::device::{DeviceLinkService, EnrolmentService, WsListener};
use carebell_gateway::tls::CertificateStore;
use carebell_gateway::{
    AlarmBatcher, ConsoleService, ConsoleSettings, DeviceContext, DeviceSettings, SessionBatchers,
};
use carebell_presence::{InMemoryBackend, KeySchema, Presence, PresenceBackend, RedisBackend};
use carebell_proto::console::v1::console_server::ConsoleServer;
use carebell_proto::family::v1::family_server::FamilyServer;
use carebell_proto::provider::v1::provider_server::ProviderServer;
use carebell_store::Store;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::settings::Settings;

/// The names gRPC health reports on: the node as a whole ("") and each API.
const HEALTH_SERVICES: [&str; 6] = [
    "",
    "carebell.console.v1.Console",
    "carebell.family.v1.Family",
    "carebell.provider.v1.Provider",
    "carebell.device.v1.DeviceLink",
    "carebell.device.v1.DeviceEnrolment",
];

pub struct Application {
    settings: Settings,
    store: Store,
    /// The device sessions' batches and the last-seen writes (generic plans; may be `store`).
    session_store: Store,
    hub: Arc<Hub>,
    presence: Presence,
    certificates: Option<Arc<CertificateStore>>,
    device_context: DeviceContext,
    websocket: WsListener,
    websocket_addr: SocketAddr,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    web_listener: TcpListener,
    web_addr: SocketAddr,
    web_tls: Option<Arc<rustls::ServerConfig>>,
    grpc_tls: Option<Arc<rustls::ServerConfig>>,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
    admission: Arc<carebell_gateway::admission::Admission>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Application {
    /// Connects to PostgreSQL (migrating unless told not to), sets up presence and binds both
    /// listeners. Redis is not contacted here: a node starts whether or not Redis is up.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Only the ring provider is compiled in; make it the process default for tonic's TLS.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if settings.run_migrations {
            // As the schema's owner, on a connection of its own.
            let owner = Store::connect(
                settings
                    .database_migrate_url
                    .as_ref()
                    .unwrap_or(&settings.database_url)
                    .expose(),
                2,
            )
            .await
            .context("failed to connect to PostgreSQL to apply migrations")?;
            owner
                .migrate()
                .await
                .context("failed to apply database migrations")?;
            owner.close().await;
        }
        let store = Store::connect_as(
            settings.database_url.expose(),
            settings.database_max_connections,
            Some(settings.database_app_role.as_str()),
        )
        .await
        .with_context(|| {
            format!(
                "failed to connect to PostgreSQL as role {:?} (deploy/ensure-services.sh makes \
                 it; docs/security.md says how; database_app_role = \"\" works as the URL's user)",
                settings.database_app_role
            )
        })?;
        match store.server_configuration_warnings().await {
            Ok(warnings) => {
                for warning in warnings {
                    tracing::warn!("{warning}");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the database server's configuration")
            }
        }
        let backend: Arc<dyn PresenceBackend> = match &settings.redis_url {
            Some(url) => Arc::new(
                RedisBackend::new(
                    url.expose(),
                    KeySchema::new(&settings.redis_key_prefix),
                    Settings::ms(settings.presence.redis_timeout_ms),
                )
                .context("failed to parse the Redis URL")?,
            ),
            None => Arc::new(InMemoryBackend::default()),
        };
        let presence = Presence::new(&settings.node_id, backend);
        let hub = Hub::new();
        let certificates = match (&settings.tls.cert_path, &settings.tls.key_path) {
            (Some(cert), Some(key)) if !settings.insecure => Some(
                CertificateStore::load_with_tickets(
                    cert,
                    key,
                    settings.tls.ticket_key_path.as_deref(),
                )
                .context("failed to read the TLS certificate or ticket keys")?,
            ),
            _ => None,
        };
        let client_ca = match &settings.tls.client_ca_path {
            Some(path) => Some(std::fs::read(path).with_context(|| {
                format!("failed to read the provisioning CA {}", path.display())
            })?),
            None => None,
        };
        // Devices may present a client certificate (mutual TLS); browsers are not asked for one.
        let tls_config = certificates
            .as_ref()
            .map(|certificates| {
                certificates.server_config_verifying(&[b"http/1.1"], client_ca.as_deref())
            })
            .transpose()
            .context("failed to build the TLS configuration")?;
        let web_tls = certificates
            .as_ref()
            .map(|certificates| certificates.server_config(&[b"http/1.1"]))
            .transpose()
            .context("failed to build the TLS configuration")?;
        let grpc_tls = certificates
            .as_ref()
            .map(|certificates| {
                certificates.server_config_verifying(&[b"h2"], client_ca.as_deref())
            })
            .transpose()
            .context("failed to configure gRPC TLS")?;

        carebell_gateway::configure_request_limit(
            settings.console.max_requests_per_second,
            settings.console.request_burst,
        );
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Alarms have connections of their own, so a storm's arrivals never hold them up; the
        // sessions' batches (and the last-seen refresher) have theirs. Both run generic plans
        // (`Store::connect_for_batches`); 0 shares the main pool.
        let batch_store = |connections: u32, what: &'static str| {
            let store = store.clone();
            let url = settings.database_url.expose().to_owned();
            let role = settings.database_app_role.clone();
            async move {
                match connections {
                    0 => Ok(store),
                    connections => Store::connect_for_batches(&url, connections, Some(&role))
                        .await
                        .with_context(|| {
                            format!("failed to connect the {what}' PostgreSQL connections")
                        }),
                }
            }
        };
        let alarm_store = batch_store(settings.device.alarm_connections, "alarms").await?;
        let session_store =
            batch_store(settings.device.session_connections, "device sessions").await?;
        let device_context = DeviceContext {
            store: store.clone(),
            alarms: AlarmBatcher::spawn(
                alarm_store,
                settings.device.batch_max,
                settings.device.batches_in_flight,
            ),
            sessions: SessionBatchers::spawn(
                session_store.clone(),
                settings.device.batch_max,
                settings.device.batches_in_flight,
            ),
            hub: Arc::clone(&hub),
            presence: presence.clone(),
            settings: Arc::new(DeviceSettings {
                heartbeat_interval: Settings::ms(settings.device.heartbeat_interval_ms),
                silence_limit: settings.offline_after(),
                max_frame_bytes: settings.device.max_frame_bytes,
                handshake_timeout: Settings::ms(settings.device.handshake_timeout_ms),
                go_away_window: Settings::ms(settings.device.go_away_window_ms),
                max_concurrent_handshakes: settings.device.max_concurrent_handshakes,
                handshake_queue: Settings::ms(settings.device.handshake_queue_ms),
                max_handshakes_per_address: settings.device.max_handshakes_per_address,
                max_messages_per_second: settings.device.max_messages_per_second,
                message_burst: settings.device.message_burst,
                require_client_certificate: settings.device.require_client_certificate,
                max_connections: match settings.device.max_connections {
                    0 => rlimit::getrlimit(rlimit::Resource::NOFILE)
                        .map(|(soft, _)| {
                            usize::try_from(soft.saturating_sub(1000))
                                .unwrap_or(usize::MAX)
                                .max(100)
                        })
                        .unwrap_or(0),
                    cap => cap,
                },
            }),
            shutdown: shutdown.clone(),
        };
        let websocket_context = device_context.clone();
        let websocket_listener =
            carebell_gateway::net::bind(settings.listen.websocket, settings.listen.backlog)
                .with_context(|| {
                    format!(
                        "failed to bind the WebSocket listener on {}",
                        settings.listen.websocket
                    )
                })?;
        let websocket_addr = websocket_listener
            .local_addr()
            .context("failed to read the WebSocket address")?;
        // One connection cap for the process, shared by the device WebSocket and gRPC listeners
        // (over TLS; the plaintext `insecure` development mode has no admission on gRPC).
        let admission = carebell_gateway::admission::Admission::new(
            device_context.settings.max_connections,
            device_context.settings.max_handshakes_per_address,
        );
        let websocket = WsListener::new(
            websocket_listener,
            tls_config,
            websocket_context,
            Arc::clone(&admission),
        );
        let web_listener =
            carebell_gateway::net::bind(settings.listen.web, settings.listen.backlog)
                .with_context(|| {
                    format!("failed to bind the web listener on {}", settings.listen.web)
                })?;
        let web_addr = web_listener
            .local_addr()
            .context("failed to read the web address")?;
        let grpc_listener =
            carebell_gateway::net::bind(settings.listen.grpc, settings.listen.backlog)
                .with_context(|| {
                    format!(
                        "failed to bind the gRPC listener on {}",
                        settings.listen.grpc
                    )
                })?;
        let grpc_addr = grpc_listener
            .local_addr()
            .context("failed to read the gRPC address")?;
        // Not shared between processes (no SO_REUSEPORT): each node's figures are its own.
        let metrics_listener = TcpListener::bind(settings.listen.metrics)
            .await
            .with_context(|| {
                format!(
                    "failed to bind the metrics listener on {}",
                    settings.listen.metrics
                )
            })?;
        let metrics_addr = metrics_listener
            .local_addr()
            .context("failed to read the metrics address")?;
        Ok(Self {
            settings,
            store,
            session_store,
            hub,
            presence,
            certificates,
            device_context,
            websocket,
            websocket_addr,
            grpc_listener,
            grpc_addr,
            web_listener,
            web_addr,
            web_tls,
            grpc_tls,
            metrics_listener,
            metrics_addr,
            admission,
            shutdown,
            tracker,
        })
    }

    /// Where `/metrics`, `/livez` and `/readyz` are served (plain HTTP).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Where the browser pages are served.
    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    pub fn websocket_addr(&self) -> SocketAddr {
        self.websocket_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `stop` resolves; then stops accepting, tells devices to go away, and waits
    /// for sessions to finish, at most the configured grace period.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Application {
            settings,
            store,
            session_store,
            hub,
            presence,
            certificates,
            device_context,
            websocket,
            websocket_addr,
            grpc_listener,
            grpc_addr,
            web_listener,
            web_addr,
            web_tls,
            grpc_tls,
            metrics_listener,
            metrics_addr,
            admission,
            shutdown,
            tracker,
        } = self;
        let scheme = if certificates.is_some() {
            "TLS"
        } else {
            "plaintext (insecure)"
        };
        tracing::info!(node_id = %settings.node_id, %websocket_addr, %grpc_addr, %web_addr, %metrics_addr, scheme, "carebell is serving");
        // The probes and metrics outlive the drain, so that it can be watched; they stop last.
        let probe =
            crate::observability::Probe::new(store.clone(), settings.database_max_connections);
        let metrics_stop = CancellationToken::new();
        let metrics_server = tokio::spawn(
            axum::serve(
                metrics_listener,
                crate::observability::router(probe.clone()),
            )
            .with_graceful_shutdown(metrics_stop.clone().cancelled_owned())
            .into_future(),
        );

        tracker.spawn(websocket.run(tracker.clone()));
        tracker.spawn(carebell_dispatch::run_listener(
            store.clone(),
            Arc::clone(&hub),
            shutdown.clone(),
        ));
        let dispatcher = Dispatcher::new(
            store.clone(),
            Arc::clone(&hub),
            DispatcherConfig {
                ring_timeout: Settings::ms(settings.dispatch.ring_timeout_ms),
                sweep_interval: Settings::ms(settings.dispatch.sweep_interval_ms),
                offline_after: settings.offline_after(),
            },
        );
        tracker.spawn(dispatcher.run(shutdown.clone()));
        if let Some(config) = webhook_config(&settings)? {
            tracker.spawn(carebell_dispatch::webhook::run_webhook_worker(
                store.clone(),
                config,
                shutdown.clone(),
            ));
        }
        // Durable last-seen times, often enough that a live device never looks offline.
        let last_seen_interval =
            Settings::ms(settings.device.heartbeat_interval_ms / 2).min(Duration::from_secs(5));
        // Each device's time is rewritten at most every quarter of the offline threshold: the
        // offline sweep still sees a live device as live, and a fleet of 100,000 costs a few
        // thousand row updates a second instead of tens of thousands.
        let write_every = (settings.offline_after() / 4).max(last_seen_interval);
        tracker.spawn(carebell_dispatch::run_last_seen_refresher(
            session_store.clone(),
            Arc::clone(&hub),
            last_seen_interval,
            write_every,
            shutdown.clone(),
        ));
        let refresh = Settings::ms(settings.presence.refresh_interval_ms);
        tracker.spawn(presence.clone().run_refresher(
            refresh,
            Duration::from_millis(100),
            shutdown.clone().cancelled_owned(),
        ));

        let console = ConsoleService::new(
            store.clone(),
            Arc::clone(&hub),
            presence.clone(),
            ConsoleSettings {
                session_ttl: Duration::from_secs(settings.console.session_ttl_secs),
                ring_timeout: Settings::ms(settings.dispatch.ring_timeout_ms),
            },
            shutdown.clone(),
            tracker.clone(),
        );
        let console = Arc::new(console);
        let family = Arc::new(carebell_gateway::FamilyService::new(
            store.clone(),
            presence.clone(),
            Duration::from_secs(settings.console.session_ttl_secs),
            shutdown.clone(),
            tracker.clone(),
        ));
        let provider = Arc::new(carebell_gateway::ProviderService::new(
            store.clone(),
            Arc::clone(&hub),
            Duration::from_secs(settings.console.session_ttl_secs),
            shutdown.clone(),
            tracker.clone(),
        ));
        let device_scheme = if web_tls.is_some() { "wss" } else { "ws" };
        let web_state = carebell_gateway::web::WebState {
            console: Arc::clone(&console),
            family: Arc::clone(&family),
            provider: Arc::clone(&provider),
            config: Arc::new(carebell_gateway::web::WebConfig {
                ice_servers: settings.webrtc.ice_servers.clone(),
                device_websocket_url: format!(
                    "{device_scheme}://localhost:{}/",
                    websocket_addr.port()
                ),
            }),
            shutdown: shutdown.clone(),
        };
        tracker.spawn(carebell_gateway::web::serve(
            web_listener,
            web_tls,
            carebell_gateway::web::router(web_state),
            shutdown.clone(),
            tracker.clone(),
        ));
        let devices = DeviceLinkService::new(device_context, tracker.clone());
        let grpc_shutdown = shutdown.clone();
        // gRPC health (every API by name, and "" for the node) and reflection, for load
        // balancers, probes and grpcurl.
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in HEALTH_SERVICES {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(carebell_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("failed to build gRPC reflection")?;
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .timeout(Duration::from_secs(3600))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(ConsoleServer::from_arc(console))
            .add_service(FamilyServer::from_arc(family))
            .add_service(ProviderServer::from_arc(provider))
            .add_service(devices.into_server())
            .add_service(EnrolmentService::new(store.clone()).into_server());
        // TLS is ours rather than tonic's, so that a renewed certificate is picked up here too.
        let grpc = match grpc_tls {
            Some(config) => {
                let incoming = carebell_gateway::tls::tls_incoming(
                    grpc_listener,
                    config,
                    Settings::ms(settings.device.handshake_timeout_ms),
                    admission,
                    shutdown.clone(),
                );
                tokio::spawn(
                    router.serve_with_incoming_shutdown(incoming, grpc_shutdown.cancelled_owned()),
                )
            }
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_listener),
                grpc_shutdown.cancelled_owned(),
            )),
        };
        if let Some(certificates) = certificates {
            tracker.spawn(certificates.watch(
                Settings::ms(settings.tls.reload_interval_ms),
                shutdown.clone(),
            ));
        }

        probe.set_ready();
        stop.await;
        // Everything from here fits in the grace period.
        let deadline = tokio::time::Instant::now() + Settings::ms(settings.shutdown_grace_ms);
        // Load balancers stop sending new work here first, while the node still serves.
        probe.set_draining();
        for name in HEALTH_SERVICES {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        tracing::info!(
            notice_ms = settings.shutdown_notice_ms,
            "draining: reporting not-ready before telling devices to go away"
        );
        tokio::time::sleep(Settings::ms(settings.shutdown_notice_ms)).await;
        tracing::info!("draining: telling devices to go away and finishing work in flight");
        shutdown.cancel();
        tracker.close();
        if tokio::time::timeout_at(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "grace period over; abandoning remaining sessions"
            );
        }
        match tokio::time::timeout_at(deadline, grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "gRPC server ended with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "gRPC server task failed"),
            Err(_) => tracing::warn!("gRPC server did not stop within the grace period"),
        }
        // The probes and the pool get a last second past the grace, not more.
        metrics_stop.cancel();
        let last = deadline + Duration::from_secs(1);
        if tokio::time::timeout_at(last, metrics_server).await.is_err() {
            tracing::warn!("metrics server did not stop in time");
        }
        if tokio::time::timeout_at(last, store.pool().close())
            .await
            .is_err()
        {
            tracing::warn!("database pool did not close in time");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The webhook worker's configuration, when a webhook URL is set.
fn webhook_config(
    settings: &Settings,
) -> anyhow::Result<Option<carebell_dispatch::webhook::WebhookConfig>> {
    let (Some(url), Some(secret)) = (&settings.webhook.url, &settings.webhook.secret) else {
        return Ok(None);
    };
    let tls = match &settings.webhook.ca_path {
        Some(path) if url.starts_with("https://") => {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(certificate.context("failed to parse the webhook CA")?)
                    .context("failed to use the webhook CA")?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .context("failed to configure webhook TLS")?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        }
        _ => None,
    };
    Ok(Some(carebell_dispatch::webhook::WebhookConfig {
        url: url.parse().context("failed to parse webhook.url")?,
        secret: secret.expose().as_bytes().to_vec(),
        max_attempts: settings.webhook.max_attempts,
        base_backoff: Settings::ms(settings.webhook.base_backoff_ms),
        max_backoff: Settings::ms(settings.webhook.max_backoff_ms),
        timeout: Settings::ms(settings.webhook.timeout_ms),
        tls,
    }))
}
