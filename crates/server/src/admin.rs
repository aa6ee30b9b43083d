//! `carebell admin`: enrol stations, residents and operators, and provision devices.

use std::path::PathBuf;

use anyhow::{bail, Context};
use carebell_gateway::console::hash_password;
use carebell_store::{NewDevice, NewResident, Store};
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use firmware_sim::Credentials;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add a station (a community service station); prints its id.
    AddStation {
        #[arg(long)]
        name: String,
    },
    /// Enrol a resident at a station; prints the resident's id.
    AddResident {
        #[arg(long)]
        station: Uuid,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        address: String,
        #[arg(long, default_value = "")]
        phone: String,
        /// Mandarin, Cantonese, Hakka, Teochew, ...
        #[arg(long, default_value = "")]
        dialect: String,
        #[arg(long, default_value = "")]
        medical_notes: String,
        /// Shown first on the operator's card: allergies, falls, living alone...
        #[arg(long, default_value = "")]
        risk_warnings: String,
        /// How responders get in: key safe location and code, neighbour with keys.
        #[arg(long, default_value = "")]
        key_safe: String,
    },
    /// Add an operator; the password comes from CAREBELL_NEW_OPERATOR_PASSWORD (never an
    /// argument, which other users could read from the process list).
    AddOperator {
        #[arg(long)]
        username: String,
        #[arg(long)]
        display_name: String,
        #[arg(
            long,
            env = "CAREBELL_NEW_OPERATOR_PASSWORD",
            hide_env_values = true,
            hide = true
        )]
        password: String,
    },
    /// Register a tablet for a resident: makes its key pair, stores only the public key and
    /// writes the credentials file (once; an existing file is never overwritten).
    ProvisionDevice {
        #[arg(long)]
        resident: Uuid,
        /// Where to write the credentials file.
        #[arg(long)]
        out: PathBuf,
        /// Defaults to `tab-` and 12 random hex digits.
        #[arg(long)]
        device_id: Option<String>,
        #[arg(long, default_value = "wss://localhost:8443/")]
        websocket_url: String,
        #[arg(long, default_value = "https://localhost:8444")]
        grpc_url: String,
        /// PEM file of the CA the tablet should trust (for a private or development CA).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Print a resident's record (the read is audited as the administrator's).
    ShowResident {
        #[arg(long)]
        id: Uuid,
    },
    /// A one-time enrolment code for a new tablet of a resident, printed as text and as a QR
    /// code for the installer; the tablet generates its own key and registers it with the code
    /// (`tablet-sim --enrol CODE`). `--replaces` revokes the old tablet when the new one enrols.
    EnrolmentCode {
        #[arg(long)]
        resident: Uuid,
        #[arg(long)]
        replaces: Option<String>,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        valid_for: std::time::Duration,
        /// The gateway's gRPC address, put in the QR code with the code.
        #[arg(long, default_value = "https://localhost:8444")]
        grpc_url: String,
    },
    /// Issue a tablet's client certificate from the provisioning CA (mutual TLS) and bind the
    /// tablet to it: writes `<device>.pem` and `<device>.key` into `--out`.
    IssueClientCert {
        #[arg(long)]
        device_id: String,
        /// Where `client-ca.pem` and `client-ca.key` are (`carebell dev-cert` makes a
        /// development pair).
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a tablet: it is disconnected from whichever node holds it and cannot connect
    /// again (a replacement enrols with `enrolment-code --replaces`).
    RevokeDevice {
        #[arg(long)]
        device_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The audit log, newest first: who read or changed what, when.
    Audit {
        #[arg(long)]
        resident: Option<Uuid>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Write everything stored about a resident as JSON (audited).
    ExportResident {
        #[arg(long)]
        id: Uuid,
        /// Where to write it ("-": standard output).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Erase a resident's personal data on request, keeping the care and money records that
    /// must be kept (see docs/security.md). Cannot be undone.
    EraseResident {
        #[arg(long)]
        id: Uuid,
        /// Required: the resident's id again, to confirm.
        #[arg(long)]
        confirm: Uuid,
    },
    /// Replace an operator's skills (e.g. dialect:cantonese,station:<station id>,nurse).
    SetSkills {
        #[arg(long)]
        username: String,
        /// Comma-separated; empty clears them.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        skills: Vec<String>,
    },
    /// Add a contact to a resident: ordered (--position 1, 2, ...) or told in parallel (no
    /// position); optionally linked to a family account that can follow and acknowledge alerts.
    AddContact {
        #[arg(long)]
        resident: Uuid,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        relationship: String,
        #[arg(long, default_value = "")]
        phone: String,
        #[arg(long)]
        holds_keys: bool,
        #[arg(long)]
        position: Option<i32>,
        /// The family account (username) this contact signs in with.
        #[arg(long)]
        family_account: Option<String>,
        /// How the contact is reached: app (the family API), sms, webhook; comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "app")]
        channels: Vec<String>,
    },
    /// Add a family account; the password comes from CAREBELL_NEW_FAMILY_PASSWORD.
    AddFamilyAccount {
        #[arg(long)]
        username: String,
        #[arg(long)]
        display_name: String,
        #[arg(
            long,
            env = "CAREBELL_NEW_FAMILY_PASSWORD",
            hide_env_values = true,
            hide = true
        )]
        password: String,
    },
    /// Register a fleet of simulated tablets for load tests (`tablet-fleet`), their keys derived
    /// from a seed; prints how many were added.
    FleetProvision {
        #[arg(long, default_value = "fleet")]
        seed: String,
        #[arg(long, default_value = "fleet")]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        first: u64,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "Fleet station")]
        station_name: String,
    },
    /// Service orders: the provider network, the policy, service cards, statements, reports.
    Services {
        #[command(subcommand)]
        command: crate::admin_services::ServicesCommand,
    },
    /// Routing rules: show the rules in force, or load new ones from a TOML or JSON file.
    Routing {
        #[command(subcommand)]
        command: RoutingCommand,
    },
    /// Proactive care: schedules, content for the tablets, tablets due a test call.
    Care {
        #[command(subcommand)]
        command: crate::admin_care::CareCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoutingCommand {
    /// Print the rules in force (JSON).
    Show,
    /// Validate a rule set and put it in force; an invalid one is refused whole and the rules
    /// in force stay.
    Load {
        #[arg(long)]
        file: PathBuf,
    },
}

const MIN_PASSWORD_CHARS: usize = 8;

/// Runs one admin command; returns what to print.
impl AdminCommand {
    /// How a successful run is written to the audit log: the action, and the resident it
    /// concerns. `None` for the commands that audit themselves in their own transaction (the
    /// record read, enrolment, revocation, export, erasure). Only names and ids: the audit log
    /// is kept for ever, so it never holds personal data.
    fn audit_label(&self) -> Option<(&'static str, Option<Uuid>)> {
        Some(match self {
            AdminCommand::ShowResident { .. }
            | AdminCommand::EnrolmentCode { .. }
            | AdminCommand::RevokeDevice { .. }
            | AdminCommand::ExportResident { .. }
            | AdminCommand::EraseResident { .. } => return None,
            AdminCommand::AddStation { .. } => ("admin.add_station", None),
            AdminCommand::AddResident { .. } => ("admin.add_resident", None),
            AdminCommand::AddOperator { .. } => ("admin.add_operator", None),
            AdminCommand::ProvisionDevice { resident, .. } => {
                ("admin.provision_device", Some(*resident))
            }
            AdminCommand::IssueClientCert { .. } => ("admin.issue_client_cert", None),
            AdminCommand::Audit { resident, .. } => ("admin.audit", *resident),
            AdminCommand::SetSkills { .. } => ("admin.set_skills", None),
            AdminCommand::AddContact { resident, .. } => ("admin.add_contact", Some(*resident)),
            AdminCommand::AddFamilyAccount { .. } => ("admin.add_family_account", None),
            AdminCommand::FleetProvision { .. } => ("admin.fleet_provision", None),
            AdminCommand::Services { .. } => ("admin.services", None),
            AdminCommand::Routing { .. } => ("admin.routing", None),
            AdminCommand::Care { command } => command.audit_label(),
        })
    }
}

/// Runs one administration command; what it did is written to the audit log as the
/// administrator's (`admin:cli`).
pub async fn run(store: &Store, command: AdminCommand) -> anyhow::Result<String> {
    let label = command.audit_label();
    let printed = execute(store, command).await?;
    if let Some((action, resident)) = label {
        store
            .audit_admin(action, resident)
            .await
            .context("the command ran, but writing it to the audit log failed")?;
    }
    Ok(printed)
}

async fn execute(store: &Store, command: AdminCommand) -> anyhow::Result<String> {
    match command {
        AdminCommand::Care { command } => crate::admin_care::execute(store, command).await,
        AdminCommand::AddStation { name } => {
            let id = store
                .add_station(name.trim())
                .await
                .context("failed to add the station")?;
            Ok(id.to_string())
        }
        AdminCommand::AddResident {
            station,
            name,
            address,
            phone,
            dialect,
            medical_notes,
            risk_warnings,
            key_safe,
        } => {
            let id = store
                .add_resident(&NewResident {
                    station_id: station,
                    full_name: name,
                    address,
                    phone,
                    dialect,
                    medical_notes,
                    risk_warnings,
                    key_safe,
                })
                .await
                .context("failed to add the resident")?;
            Ok(id.to_string())
        }
        AdminCommand::AddOperator {
            username,
            display_name,
            password,
        } => {
            let (username, hash) = new_account(&username, password).await?;
            let id = store
                .add_operator(username.as_str(), display_name.trim(), &hash)
                .await
                .context("failed to add the operator")?;
            Ok(id.to_string())
        }
        AdminCommand::ProvisionDevice {
            resident,
            out,
            device_id,
            websocket_url,
            grpc_url,
            ca,
        } => {
            // Claim the path first: a device is registered only if its credentials can be kept.
            let file =
                Credentials::create_file(&out).context("failed to create the credentials file")?;
            let provisioned = provision_device(
                store,
                resident,
                device_id.as_deref(),
                &websocket_url,
                &grpc_url,
                ca,
            )
            .await;
            let credentials = match provisioned {
                Ok(credentials) => credentials,
                Err(error) => {
                    drop(file);
                    let _ = std::fs::remove_file(&out);
                    return Err(error);
                }
            };
            credentials
                .write_into(file, &out)
                .context("failed to write the credentials file")?;
            Ok(format!(
                "{} (credentials in {})",
                credentials.device_id,
                out.display()
            ))
        }
        AdminCommand::AddContact {
            resident,
            name,
            relationship,
            phone,
            holds_keys,
            position,
            family_account,
            channels,
        } => {
            if let Some(unknown) = channels
                .iter()
                .find(|channel| !["app", "sms", "webhook"].contains(&channel.as_str()))
            {
                bail!("unknown channel '{unknown}': use app, sms or webhook");
            }
            let family_account_id = match family_account {
                Some(username) => Some(
                    store
                        .family_credentials(&username)
                        .await
                        .context("failed to look up the family account")?
                        .map(|(id, _, _)| id)
                        .ok_or_else(|| {
                            anyhow::anyhow!("there is no family account '{username}'")
                        })?,
                ),
                None => None,
            };
            let id = store
                .add_contact(&carebell_store::NewContact {
                    resident_id: resident,
                    name,
                    relationship,
                    phone,
                    holds_keys,
                    position,
                    family_account_id,
                    channels,
                })
                .await
                .context("failed to add the contact")?;
            Ok(id.to_string())
        }
        AdminCommand::AddFamilyAccount {
            username,
            display_name,
            password,
        } => {
            let (username, hash) = new_account(&username, password).await?;
            let id = store
                .add_family_account(username.as_str(), display_name.trim(), &hash)
                .await
                .context("failed to add the family account")?;
            Ok(id.to_string())
        }
        AdminCommand::SetSkills { username, skills } => {
            let skills: Vec<String> = skills
                .into_iter()
                .map(|skill| skill.trim().to_owned())
                .filter(|skill| !skill.is_empty())
                .collect();
            store
                .set_operator_skills(&username, &skills)
                .await
                .context("failed to set the skills")?;
            Ok(format!("{username}: {}", skills.join(", ")))
        }
        AdminCommand::Services { command } => crate::admin_services::run(store, command).await,
        AdminCommand::EnrolmentCode {
            resident,
            replaces,
            valid_for,
            grpc_url,
        } => {
            let code = store
                .create_enrolment_code(resident, replaces.as_deref(), valid_for, "admin:cli")
                .await
                .context("failed to make an enrolment code")?;
            let payload = format!("carebell:enrol?code={code}&server={grpc_url}");
            let qr = qrcode::QrCode::new(payload.as_bytes())
                .context("the code does not fit a QR code")?
                .render::<char>()
                .quiet_zone(true)
                .module_dimensions(2, 1)
                .build();
            Ok(format!(
                "enrolment code: {code} (valid for {}, once)\n{payload}\n\n{qr}",
                humantime::format_duration(valid_for)
            ))
        }
        AdminCommand::IssueClientCert {
            device_id,
            ca_dir,
            out,
        } => {
            let device_id = carebell_domain::DeviceId::parse(device_id.trim())?;
            let ca = crate::devcert::ProvisioningCa::read(&ca_dir)?;
            let certificate = ca.issue(device_id.as_str())?;
            store
                .bind_client_certificate(device_id.as_str(), &certificate.sha256)
                .await
                .context("failed to bind the device to its certificate")?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("failed to create {}", out.display()))?;
            let cert_path = out.join(format!("{device_id}.pem"));
            let key_path = out.join(format!("{device_id}.key"));
            std::fs::write(&cert_path, &certificate.cert_pem)
                .with_context(|| format!("failed to write {}", cert_path.display()))?;
            crate::devcert::write_private(&key_path, &certificate.key_pem)?;
            Ok(format!(
                "device {device_id} bound to the certificate in {} (key {})",
                cert_path.display(),
                key_path.display()
            ))
        }
        AdminCommand::RevokeDevice { device_id, reason } => {
            store
                .revoke_device(device_id.trim(), "admin:cli", reason.trim())
                .await
                .context("failed to revoke the device")?;
            Ok(format!("device {} revoked", device_id.trim()))
        }
        AdminCommand::Audit {
            resident,
            actor,
            limit,
        } => {
            let entries = store
                .audit_entries(resident, actor.as_deref(), limit)
                .await
                .context("failed to read the audit log")?;
            Ok(entries
                .iter()
                .map(|entry| {
                    format!(
                        "{}\t{}\t{}\t{}\t{}",
                        entry
                            .at
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        entry.actor,
                        entry.action,
                        entry
                            .resident_id
                            .map(|id| id.to_string())
                            .unwrap_or_else(|| "-".to_owned()),
                        entry.detail
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        AdminCommand::ExportResident { id, out } => {
            let export = store
                .export_resident(id, "admin:cli")
                .await
                .context("failed to export the resident")?;
            let text = serde_json::to_string_pretty(&export)?;
            if out.as_os_str() == "-" {
                Ok(text)
            } else {
                std::fs::write(&out, text)
                    .with_context(|| format!("failed to write {}", out.display()))?;
                Ok(format!("written to {}", out.display()))
            }
        }
        AdminCommand::EraseResident { id, confirm } => {
            if id != confirm {
                bail!("--confirm must repeat the resident's id");
            }
            let erasure = store
                .erase_resident(id, "admin:cli")
                .await
                .context("failed to erase the resident")?;
            Ok(format!(
                "resident {id} erased: {} devices revoked, {} contacts anonymised, {} events scrubbed, {} webhook bodies cleared",
                erasure.devices_revoked,
                erasure.contacts_anonymised,
                erasure.events_scrubbed,
                erasure.webhook_bodies_cleared
            ))
        }
        AdminCommand::FleetProvision {
            seed,
            prefix,
            first,
            count,
            station_name,
        } => {
            carebell_domain::DeviceId::parse(&firmware_sim::fleet::fleet_device_id(&prefix, first))
                .context("the prefix makes invalid device ids")?;
            if count > 1_000_000 {
                bail!("at most 1,000,000 tablets at a time");
            }
            let devices: Vec<(String, [u8; 32])> = (first..first + count)
                .map(|index| {
                    (
                        firmware_sim::fleet::fleet_device_id(&prefix, index),
                        firmware_sim::fleet::fleet_signing_key(&seed, index)
                            .verifying_key()
                            .to_bytes(),
                    )
                })
                .collect();
            let station = store
                .add_station(&station_name)
                .await
                .context("failed to add the fleet's station")?;
            let added = store
                .add_fleet(station, &devices)
                .await
                .context("failed to register the fleet")?;
            Ok(format!(
                "{added} tablets registered ({} already were)",
                count - added
            ))
        }
        AdminCommand::Routing {
            command: RoutingCommand::Show,
        } => Ok(store
            .routing_rules()
            .await
            .context("failed to read the routing rules")?
            .to_json()),
        AdminCommand::Routing {
            command: RoutingCommand::Load { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let version = store
                .load_routing_rules(&text, "admin:cli")
                .await
                .context("the routing rules were refused; the rules in force are unchanged")?;
            Ok(format!("routing rules version {version} in force"))
        }
        AdminCommand::ShowResident { id } => {
            let record = store
                .read_resident(id, "admin:cli")
                .await
                .context("failed to read the resident")?;
            let mut text = format!(
                "resident {}\nname: {}\naddress: {}\nphone: {}\nstation: {}\ndialect: {}\nmedical notes: {}",
                record.resident_id, record.full_name, record.address, record.phone, record.station_name, record.dialect, record.medical_notes
            );
            for device in record.devices {
                text.push_str(&format!("\ndevice: {}", device.device_id));
            }
            Ok(text)
        }
    }
}

/// Checks a new account's username and password and hashes the password (argon2id).
pub(crate) async fn new_account(
    username: &str,
    password: String,
) -> anyhow::Result<(carebell_domain::Username, String)> {
    let username = carebell_domain::Username::parse(username).context("invalid username")?;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        bail!("the password must have at least {MIN_PASSWORD_CHARS} characters");
    }
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .context("failed to hash the password")?
        .map_err(|error| anyhow::anyhow!("failed to hash the password: {error}"))?;
    Ok((username, hash))
}

/// Registers a new device for `resident` and returns its credentials (not yet written).
pub async fn provision_device(
    store: &Store,
    resident: Uuid,
    device_id: Option<&str>,
    websocket_url: &str,
    grpc_url: &str,
    ca: Option<PathBuf>,
) -> anyhow::Result<Credentials> {
    let device_id = match device_id {
        Some(device_id) => carebell_domain::DeviceId::parse(device_id)
            .context("invalid device id")?
            .to_string(),
        None => format!("tab-{}", &Uuid::new_v4().simple().to_string()[..12]),
    };
    let signing_key = SigningKey::generate(&mut rand::rngs::OsRng);
    store
        .add_device(&NewDevice {
            device_id: device_id.clone(),
            resident_id: resident,
            public_key: signing_key.verifying_key().to_bytes(),
        })
        .await
        .context("failed to register the device")?;
    let mut credentials = Credentials::new(&device_id, &signing_key, websocket_url, grpc_url);
    if let Some(ca) = ca {
        credentials.ca_certificate_pem = Some(
            std::fs::read_to_string(&ca)
                .with_context(|| format!("failed to read {}", ca.display()))?,
        );
    }
    Ok(credentials)
}
