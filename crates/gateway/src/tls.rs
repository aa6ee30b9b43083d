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
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

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

    /// A rustls server configuration, ALPN set for the WebSocket listener (HTTP/1.1).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsError::NoCertificate("the certificate file".to_owned()))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate("the certificate file".to_owned()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|error| TlsError::BadKey {
                path: "the key file".to_owned(),
                detail: error.to_string(),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Session resumption, so a reconnect storm costs abbreviated handshakes: stateless
        // TLS 1.3 tickets (the key is this process's own: a tablet resumes when it reaches the
        // same process again) and a session cache for TLS 1.2.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(65_536);
        Ok(Arc::new(config))
    }

    pub fn tonic_identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}
