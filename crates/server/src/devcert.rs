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
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// The provisioning CA: it signs tablets' client certificates for mutual TLS
/// (`tls.client_ca_path`). Its key stays with the administrator, never on a gateway.
#[derive(Clone)]
pub struct ProvisioningCa {
    pub ca_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ProvisioningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisioningCa").finish_non_exhaustive()
    }
}

/// A tablet's client certificate, its key, and the SHA-256 of the certificate (DER) the
/// device is bound to.
#[derive(Clone)]
pub struct ClientCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub sha256: [u8; 32],
}

fn provisioning_params() -> anyhow::Result<CertificateParams> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).context("failed to make CA parameters")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Carebell provisioning CA");
    Ok(params)
}

impl ProvisioningCa {
    pub fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("failed to make the provisioning CA key")?;
        let certificate = provisioning_params()?
            .self_signed(&key)
            .context("failed to sign the provisioning CA")?;
        Ok(Self {
            ca_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `client-ca.pem` and `client-ca.key` from `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("failed to read {}", dir.join(name).display()))
        };
        Ok(Self {
            ca_pem: read("client-ca.pem")?,
            key_pem: read("client-ca.key")?,
        })
    }

    /// Writes `client-ca.pem` and `client-ca.key` (private) into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        std::fs::write(dir.join("client-ca.pem"), &self.ca_pem)
            .context("failed to write client-ca.pem")?;
        write_private(&dir.join("client-ca.key"), &self.key_pem)
    }

    /// A client certificate for `device_id` (its common name), signed by this CA.
    pub fn issue(&self, device_id: &str) -> anyhow::Result<ClientCertificate> {
        use sha2::Digest;
        let ca_key = KeyPair::from_pem(&self.key_pem).context("the provisioning CA key")?;
        let issuer = rcgen::Issuer::new(provisioning_params()?, ca_key);
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("failed to make client certificate parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().context("failed to make the client key")?;
        let certificate = params
            .signed_by(&key, &issuer)
            .context("failed to sign the client certificate")?;
        Ok(ClientCertificate {
            sha256: sha2::Sha256::digest(certificate.der().as_ref()).into(),
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents)
        .with_context(|| format!("failed to write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to protect {}", path.display()))?;
    }
    Ok(())
}
