//! The command line: `serve`, `migrate`, `admin ...`, `demo`, `dev-cert`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::admin::AdminCommand;
use crate::demo::{DemoOptions, DemoSummary};
use crate::devcert::DevCertificates;
use crate::settings::{Settings, SettingsError};
use crate::{telemetry, Application};

/// Carebell: the backend of a 24-hour elderly-care hotline.
#[derive(Debug, Parser)]
#[command(name = "carebell", version)]
pub struct Cli {
    /// A TOML configuration file (then CAREBELL_* environment variables override it).
    #[arg(long, global = true, env = "CAREBELL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve devices (WebSocket and gRPC) and consoles (gRPC) until SIGTERM or Ctrl-C.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Administration: stations, residents, operators, devices.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// A seeded demo with simulated tablets and bot operators, printed as it happens.
    Demo {
        /// Stop after this long (e.g. 20s); without it, run until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long, default_value_t = 3)]
        operators: usize,
        /// Where certificates and tablet credentials are written.
        #[arg(long, default_value = ".carebell/demo")]
        state_dir: PathBuf,
        /// Where the browser console is served (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:8445")]
        web: std::net::SocketAddr,
    },
    /// Configuration: `check` loads it as `serve` would (defaults, `--config`, CAREBELL_*),
    /// validates it, reads the TLS files it names, and prints the result with secrets
    /// redacted; exit status 64 when it is wrong.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write a development CA and a localhost server certificate into a directory.
    DevCert {
        #[arg(long, default_value = ".carebell/certs")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it (secrets redacted).
    Check,
    /// Print every default as TOML (a starting point for a configuration file).
    Defaults,
}

/// A configuration that `config check` refuses (exit status 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigInvalid(pub String);

/// Exit status for bad configuration (sysexits EX_USAGE... strictly EX_CONFIG is 78; the
/// project's convention is 64 for any refusal to start on bad input).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// What a command ended with.
pub enum Outcome {
    Done,
    Printed(String),
    Demo(DemoSummary),
}

/// Loads settings, or the error that means "exit 64".
pub fn load_settings(cli: &Cli) -> Result<Settings, SettingsError> {
    Settings::load(cli.config.as_deref())
}

/// Settings for commands that serve no TLS from configured files (migrate, admin, demo, which
/// makes its own certificate): everything is validated except the TLS paths.
pub fn load_settings_without_tls(cli: &Cli) -> Result<Settings, SettingsError> {
    let mut settings = Settings::load_unvalidated(cli.config.as_deref())?;
    let configured_insecure = settings.insecure;
    settings.insecure = true;
    settings.validate()?;
    settings.insecure = configured_insecure;
    Ok(settings)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A small pool on the configured database, migrated.
async fn migrated_store(settings: &Settings) -> anyhow::Result<carebell_store::Store> {
    let store = carebell_store::Store::connect(settings.database_url.expose(), 2)
        .await
        .context("failed to connect to PostgreSQL")?;
    store
        .migrate()
        .await
        .context("failed to apply migrations")?;
    Ok(store)
}

/// Runs a parsed command line with loaded settings.
pub async fn run(cli: Cli, mut settings: Settings) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Serve => {
            telemetry::init(settings.log_format, "info");
            let application = Application::build(settings).await?;
            application.run_until_stopped(shutdown_signal()).await?;
            Ok(Outcome::Done)
        }
        Command::Migrate => {
            telemetry::init(settings.log_format, "info");
            migrated_store(&settings).await?;
            Ok(Outcome::Printed("migrations applied".to_owned()))
        }
        Command::Admin { command } => {
            telemetry::init(settings.log_format, "warn");
            let store = migrated_store(&settings).await?;
            Ok(Outcome::Printed(crate::admin::run(&store, command).await?))
        }
        Command::Demo {
            duration,
            operators,
            state_dir,
            web,
        } => {
            telemetry::init(settings.log_format, "warn");
            settings.listen.websocket = "127.0.0.1:0".parse().context("bad address")?;
            settings.listen.grpc = "127.0.0.1:0".parse().context("bad address")?;
            settings.listen.web = web;
            settings.listen.metrics = "127.0.0.1:9464".parse().context("bad address")?;
            let summary = crate::demo::run(
                settings,
                DemoOptions {
                    duration,
                    n_operators: operators,
                    state_dir,
                },
            )
            .await?;
            Ok(Outcome::Demo(summary))
        }
        Command::Config {
            command: ConfigCommand::Defaults,
        } => Ok(Outcome::Printed(
            crate::settings::DEFAULTS.trim().to_owned(),
        )),
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            // The TLS files must exist and hold a certificate and its key, as `serve` needs.
            if let (Some(cert), Some(key), false) = (
                &settings.tls.cert_path,
                &settings.tls.key_path,
                settings.insecure,
            ) {
                carebell_gateway::tls::CertificateStore::load(cert, key)
                    .map_err(|error| anyhow::Error::new(ConfigInvalid(format!("tls: {error}"))))?;
            }
            if let Some(path) = &settings.tls.client_ca_path {
                std::fs::read(path).map_err(|error| {
                    anyhow::Error::new(ConfigInvalid(format!(
                        "tls.client_ca_path {}: {error}",
                        path.display()
                    )))
                })?;
            }
            Ok(Outcome::Printed(format!(
                "the configuration is valid\n{settings:#?}"
            )))
        }
        Command::DevCert { out } => {
            let (cert, key) = DevCertificates::generate()?.write(&out)?;
            crate::devcert::ProvisioningCa::generate()?.write(&out)?;
            Ok(Outcome::Printed(format!(
                "wrote {}, {} and {}, and a provisioning CA for client certificates ({}, {})",
                out.join("ca.pem").display(),
                cert.display(),
                key.display(),
                out.join("client-ca.pem").display(),
                out.join("client-ca.key").display()
            )))
        }
    }
}
