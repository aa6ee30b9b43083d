//! TLS configuration from PEM files (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    #[error("no usable private key in {path}: {detail}")]
    BadKey { path: String, detail: String },
    #[error("bad TLS ticket key file {path}: {detail}")]
    BadTicketKeys { path: String, detail: String },
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// TLS 1.3 tickets sent after each handshake (rustls sends 2 unless told). A ticket resumes
/// one handshake, and a client spends one on every attempt that gets as far as its
/// ClientHello, served or not: in a reconnect storm a tablet that tried twice and was not served
/// then paid for a full handshake, and both sides for a certificate signature and its checks.
/// At 100,000, 22,458 of the storm's reconnections resumed with two, and every one with eight
/// (though the storm was no faster: `docs/benchmarks.md`). A client keeps at most 8 (rustls's
/// `ClientSessionMemoryCache`); each costs the server one sealing and about 150 bytes on the
/// wire, and nothing held.
pub const TLS13_TICKETS_PER_HANDSHAKE: usize = 8;

/// The PEM bytes of a certificate chain and its key, as read from disk.
#[derive(Clone)]
pub struct PemIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for PemIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("PemIdentity").finish_non_exhaustive()
    }
}

impl PemIdentity {
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(Self {
            cert_pem: read(cert_path)?,
            key_pem: read(key_path)?,
        })
    }
}

fn certified_key(identity: &PemIdentity) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&identity.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NoCertificate("the certificate file".to_owned()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate("the certificate file".to_owned()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&identity.key_pem).map_err(|error| TlsError::BadKey {
            path: "the key file".to_owned(),
            detail: error.to_string(),
        })?;
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing_key);
    // The key must belong to the certificate: a renewal that paired the wrong files is refused.
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// The server's certificate and key, re-read from their files when they change: a renewed
/// certificate is used by new connections on every listener (WebSocket, gRPC, web) without a
/// restart. A renewal that does not parse, or whose key does not match, is logged and the
/// certificate in use is kept.
pub struct CertificateStore {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    stamps: std::sync::Mutex<(Option<std::time::SystemTime>, Option<std::time::SystemTime>)>,
    /// Ticket keys shared by a node's processes (`tls.ticket_key_path`); `None`: each server
    /// configuration makes its own.
    tickets: Option<Arc<crate::tickets::TicketKeys>>,
}

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateStore")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl CertificateStore {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        Self::load_with_tickets(cert_path, key_path, None)
    }

    /// As [`CertificateStore::load`], sealing TLS 1.3 session tickets with the keys in
    /// `ticket_keys` (see [`crate::tickets`]), re-read with the certificate when it changes.
    pub fn load_with_tickets(
        cert_path: &Path,
        key_path: &Path,
        ticket_keys: Option<&Path>,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = (modified(cert_path), modified(key_path));
        let key = certified_key(&PemIdentity::read(cert_path, key_path)?)?;
        let tickets = ticket_keys
            .map(crate::tickets::TicketKeys::load)
            .transpose()?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: std::sync::RwLock::new(key),
            stamps: std::sync::Mutex::new(stamps),
            tickets,
        }))
    }

    /// Re-reads the files if either changed since the last look; `Ok(true)` when a new
    /// certificate is now in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *stamps == now {
                return Ok(false);
            }
            // Looked at once per change, whether or not it parses.
            *stamps = now;
        }
        let key = certified_key(&PemIdentity::read(&self.cert_path, &self.key_path)?)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(true)
    }

    /// Looks for renewed files every `interval` until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        interval: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(path = %self.cert_path.display(), "TLS certificate reloaded")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(%error, path = %self.cert_path.display(), "the renewed TLS certificate was not loaded; keeping the one in use")
                }
            }
            if let Some(tickets) = &self.tickets {
                match tickets.reload_if_changed() {
                    Ok(true) => tracing::info!(keys = tickets.len(), "TLS ticket keys reloaded"),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::error!(%error, "the changed TLS ticket keys were not loaded; keeping the ones in use")
                    }
                }
            }
        }
    }

    /// A rustls server configuration drawing its certificate from this store, offering `alpn`.
    /// With session resumption, so a reconnect storm costs abbreviated handshakes: stateless
    /// TLS 1.3 tickets, sealed with the node's shared ticket keys when configured (a tablet
    /// then resumes with any process that reads the same file, including a restarted one),
    /// else with this configuration's own key; and a session cache for TLS 1.2.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_verifying(alpn, None)
    }

    /// As [`CertificateStore::server_config`], asking clients for a certificate from
    /// `client_ca` (PEM): mutual TLS for devices. A client without one is still let in (the
    /// device session decides, per device, whether it needed one); a certificate from another
    /// CA fails the handshake.
    pub fn server_config_verifying(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        client_ca: Option<&[u8]>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in CertificateDer::pem_slice_iter(pem) {
                    let certificate = certificate
                        .map_err(|_| TlsError::NoCertificate("the client CA file".to_owned()))?;
                    roots.add(certificate)?;
                }
                if roots.is_empty() {
                    return Err(TlsError::NoCertificate("the client CA file".to_owned()));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|error| TlsError::Rustls(rustls::Error::General(error.to_string())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_cert_resolver(Arc::clone(self) as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        config.ticketer = match &self.tickets {
            Some(shared) => Arc::clone(shared) as Arc<dyn rustls::server::ProducesTickets>,
            None => rustls::crypto::ring::Ticketer::new()?,
        };
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(65_536);
        config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
        Ok(Arc::new(config))
    }
}

impl rustls::server::ResolvesServerCert for CertificateStore {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// TLS connections accepted from `listener` with `config`, for a server that takes a stream of
/// connections (tonic): each handshake runs on its own task (bounded by `timeout`), so a slow
/// one holds up nobody.
pub fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    timeout: std::time::Duration,
    admission: Arc<crate::admission::Admission>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<
        crate::admission::Counted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        std::io::Error,
    >,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        // The same connection cap and per-address handshake share as the device WebSocket.
        while let Some(crate::admission::Admitted {
            stream,
            held,
            handshaking,
            ..
        }) = admission.accept(&listener, &shutdown).await
        {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
                drop(handshaking);
                if let Ok(Ok(tls)) = handshake {
                    let _ = tx.send(Ok(crate::admission::Counted::new(tls, held))).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
