//! A development certificate authority and a server certificate for `localhost`, so the demo
//! and tests run over real TLS without anything from outside.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files of a development CA and a server certificate it signed.
impl std::fmt::Debug for DevCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is a secret, even a development one: never printed.
        f.debug_struct("DevCertificates").finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct DevCertificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCertificates {
    /// A fresh CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn generate() -> anyhow::Result<Self> {
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).context("failed to make CA parameters")?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Carebell development CA");
        let ca_key = KeyPair::generate().context("failed to make the CA key")?;
        let ca =
            CertifiedIssuer::self_signed(ca_params, ca_key).context("failed to sign the CA")?;

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .context("failed to make server certificate parameters")?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().context("failed to make the server key")?;
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .context("failed to sign the server certificate")?;
        Ok(Self {
            ca_pem: ca.as_ref().pem(),
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`; returns (cert, key) paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).context("failed to write ca.pem")?;
        std::fs::write(&cert, &self.cert_pem).context("failed to write server.pem")?;
        std::fs::write(&key, &self.key_pem).context("failed to write server.key")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .context("failed to protect server.key")?;
        }
        Ok((cert, key))
    }
}
