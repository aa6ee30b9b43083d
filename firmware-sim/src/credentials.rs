//! The credentials file a tablet is provisioned with: its id, its Ed25519 private key and where
//! to connect. Written once, at provisioning; the server keeps only the public key.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write credentials file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid: {detail}")]
    Invalid { path: String, detail: String },
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub device_id: String,
    /// The 32-byte Ed25519 seed, base64 (standard alphabet).
    pub private_key: String,
    /// `wss://host:port/` (or `ws://` against an insecure server).
    pub websocket_url: String,
    /// `https://host:port` (or `http://` against an insecure server).
    pub grpc_url: String,
    /// PEM of the CA that signed the server's certificate, if it is not publicly trusted.
    #[serde(default)]
    pub ca_certificate_pem: Option<String>,
    /// The name in the server's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Mutual TLS: the client certificate the provisioning CA issued this tablet, and its key
    /// (`carebell admin issue-client-cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_pem: Option<String>,
}

fn default_server_name() -> String {
    "localhost".to_owned()
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is a secret: never printed.
        f.debug_struct("Credentials")
            .field("device_id", &self.device_id)
            .field("websocket_url", &self.websocket_url)
            .field("grpc_url", &self.grpc_url)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(
        device_id: &str,
        signing_key: &SigningKey,
        websocket_url: &str,
        grpc_url: &str,
    ) -> Self {
        Self {
            device_id: device_id.to_owned(),
            private_key: base64::engine::general_purpose::STANDARD.encode(signing_key.to_bytes()),
            websocket_url: websocket_url.to_owned(),
            grpc_url: grpc_url.to_owned(),
            ca_certificate_pem: None,
            server_name: default_server_name(),
            client_certificate_pem: None,
            client_key_pem: None,
        }
    }

    pub fn signing_key(&self) -> Result<SigningKey, CredentialsError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.private_key)
            .map_err(|error| CredentialsError::Invalid {
                path: "(in memory)".to_owned(),
                detail: format!("private_key is not base64: {error}"),
            })?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| CredentialsError::Invalid {
            path: "(in memory)".to_owned(),
            detail: "private_key must be 32 bytes".to_owned(),
        })?;
        Ok(SigningKey::from_bytes(&seed))
    }

    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let credentials: Self =
            serde_json::from_str(&text).map_err(|error| CredentialsError::Invalid {
                path: path.display().to_string(),
                detail: error.to_string(),
            })?;
        credentials
            .signing_key()
            .map_err(|error| CredentialsError::Invalid {
                path: path.display().to_string(),
                detail: error.to_string(),
            })?;
        Ok(credentials)
    }

    /// Writes the file once: refuses to overwrite an existing file, and makes it readable by
    /// its owner only.
    pub fn save_new(&self, path: &Path) -> Result<(), CredentialsError> {
        let file = Self::create_file(path)?;
        self.write_into(file, path)
    }

    /// Creates an empty credentials file that did not exist, readable by its owner only, so a
    /// provisioning step can claim the path before it registers anything.
    pub fn create_file(path: &Path) -> Result<std::fs::File, CredentialsError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options
            .open(path)
            .map_err(|source| CredentialsError::Write {
                path: path.display().to_string(),
                source,
            })
    }

    /// Writes these credentials into a file made by [`Credentials::create_file`].
    pub fn write_into(&self, mut file: std::fs::File, path: &Path) -> Result<(), CredentialsError> {
        let write_error = |source| CredentialsError::Write {
            path: path.display().to_string(),
            source,
        };
        let text =
            serde_json::to_string_pretty(self).map_err(|error| CredentialsError::Invalid {
                path: path.display().to_string(),
                detail: error.to_string(),
            })?;
        file.write_all(text.as_bytes()).map_err(write_error)?;
        file.write_all(b"\n").map_err(write_error)?;
        file.sync_all().map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_are_written_once() {
        let dir = std::env::temp_dir().join(format!("carebell-creds-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tablet.json");
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let credentials =
            Credentials::new("tab-1", &key, "wss://localhost:1/", "https://localhost:2");
        credentials.save_new(&path).unwrap();
        let loaded = Credentials::load(&path).unwrap();
        assert_eq!(loaded.signing_key().unwrap().to_bytes(), key.to_bytes());
        assert!(matches!(
            credentials.save_new(&path),
            Err(CredentialsError::Write { .. })
        ));
        assert!(!format!("{credentials:?}").contains(&credentials.private_key));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
