//! `carebell admin services`: the provider network's master data, the service policy, cards,
//! statements and reports.

use std::path::PathBuf;

use anyhow::{bail, Context};
use carebell_domain::orders::{EntitlementTier, GeoPoint, ServicePolicy};
use carebell_store::{report_csv, NewProvider, ProviderKind, Source, StatementOf, Store};
use chrono::NaiveDate;
use clap::Subcommand;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// The service catalogue (code, names, default price in fen).
    Catalogue,
    /// Add a centre (a district's home-care centre); prints its id.
    AddCentre {
        #[arg(long)]
        name: String,
    },
    /// A centre leads a station (中心带站).
    LeadStation {
        #[arg(long)]
        centre: Uuid,
        #[arg(long)]
        station: Uuid,
    },
    /// Add a community covered by a station; prints its id.
    AddCommunity {
        #[arg(long)]
        station: Uuid,
        #[arg(long)]
        name: String,
    },
    /// Set where a resident lives and what they pay: --tier free, market or subsidised:50.
    SetResident {
        #[arg(long)]
        resident: Uuid,
        #[arg(long, requires = "lon", allow_negative_numbers = true)]
        lat: Option<f64>,
        #[arg(long, requires = "lat", allow_negative_numbers = true)]
        lon: Option<f64>,
        #[arg(long, default_value = "market")]
        tier: String,
        #[arg(long)]
        community: Option<Uuid>,
    },
    /// Register a provider; prints its id.
    AddProvider {
        #[arg(long)]
        name: String,
        #[arg(long)]
        licence: String,
        /// social_organisation or company.
        #[arg(long, default_value = "social_organisation")]
        kind: String,
        #[arg(long, requires = "lon", allow_negative_numbers = true)]
        lat: Option<f64>,
        #[arg(long, requires = "lat", allow_negative_numbers = true)]
        lon: Option<f64>,
        /// Serves anyone within this many metres of (lat, lon).
        #[arg(long, default_value_t = 0)]
        radius_m: u32,
        /// Serves every resident of these stations (comma-separated ids).
        #[arg(long, value_delimiter = ',')]
        stations: Vec<Uuid>,
        /// Services offered: code or code=price_fen, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        services: Vec<String>,
        /// Working hours, local time, e.g. 08:00-20:00 (default: around the clock).
        #[arg(long)]
        hours: Option<String>,
        /// Orders held at once.
        #[arg(long, default_value_t = 5)]
        capacity: u32,
    },
    /// Add a staff member to a provider; prints the id.
    AddStaff {
        #[arg(long)]
        provider: Uuid,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        phone: String,
    },
    /// Add a provider account for the provider API; the password comes from
    /// CAREBELL_NEW_PROVIDER_PASSWORD.
    AddProviderAccount {
        #[arg(long)]
        provider: Uuid,
        #[arg(long)]
        username: String,
        #[arg(long)]
        display_name: String,
        #[arg(
            long,
            env = "CAREBELL_NEW_PROVIDER_PASSWORD",
            hide_env_values = true,
            hide = true
        )]
        password: String,
    },
    /// Let a provider suspended for poor ratings receive offers again.
    Reinstate {
        #[arg(long)]
        provider: Uuid,
    },
    /// Load money onto a resident's service card (amount in fen); prints the new balance.
    TopUp {
        #[arg(long)]
        resident: Uuid,
        #[arg(long, allow_negative_numbers = true)]
        fen: i64,
        #[arg(long, default_value = "")]
        memo: String,
    },
    /// A month's statement for a resident or a provider.
    Statement {
        #[arg(
            long,
            conflicts_with = "provider",
            required_unless_present = "provider"
        )]
        resident: Option<Uuid>,
        #[arg(long)]
        provider: Option<Uuid>,
        /// The month, e.g. 2026-11.
        #[arg(long)]
        month: String,
    },
    /// Figures per station for local days FROM..TO (TO exclusive).
    Report {
        #[arg(long)]
        from: NaiveDate,
        #[arg(long)]
        to: NaiveDate,
        #[arg(long)]
        station: Option<Uuid>,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
        /// Count from the event log instead of the live figures.
        #[arg(long)]
        recomputed: bool,
    },
    /// The service policy: show it, or load a new one (JSON, validated whole).
    Policy {
        #[arg(long)]
        load: Option<PathBuf>,
    },
}

fn yuan(fen: i64) -> String {
    format!(
        "{}{}.{:02}",
        if fen < 0 { "-" } else { "" },
        fen.abs() / 100,
        fen.abs() % 100
    )
}

fn parse_tier(raw: &str) -> anyhow::Result<EntitlementTier> {
    match raw {
        "free" => Ok(EntitlementTier::Free),
        "market" => Ok(EntitlementTier::Market),
        other => match other.strip_prefix("subsidised:") {
            Some(percent) => {
                let subsidy_percent: u32 = percent
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .with_context(|| format!("'{percent}' is not a percentage from 0 to 100"))?;
                Ok(EntitlementTier::Subsidised { subsidy_percent })
            }
            None => bail!("unknown tier '{other}': use free, market or subsidised:<percent>"),
        },
    }
}

fn parse_minute(raw: &str) -> anyhow::Result<u32> {
    let (hours, minutes) = raw
        .split_once(':')
        .with_context(|| format!("'{raw}' is not a time like 08:30"))?;
    let hours: u32 = hours.parse().context("bad hour")?;
    let minutes: u32 = minutes.parse().context("bad minute")?;
    if hours > 23 || minutes > 59 {
        bail!("'{raw}' is not a time of day");
    }
    Ok(hours * 60 + minutes)
}

fn position(lat: Option<f64>, lon: Option<f64>) -> anyhow::Result<Option<GeoPoint>> {
    match (lat, lon) {
        (Some(lat), Some(lon)) => Ok(Some(GeoPoint::new(lat, lon)?)),
        _ => Ok(None),
    }
}

/// Runs one services command; returns what to print.
pub async fn run(store: &Store, command: ServicesCommand) -> anyhow::Result<String> {
    match command {
        ServicesCommand::Catalogue => {
            let items = store
                .catalogue()
                .await
                .context("failed to read the catalogue")?;
            Ok(items
                .iter()
                .map(|item| {
                    format!(
                        "{:<22} {:<10} {:<30} {:>8}",
                        item.code,
                        item.name_zh,
                        item.name_en,
                        yuan(item.default_price_fen)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        ServicesCommand::AddCentre { name } => Ok(store
            .add_centre(name.trim())
            .await
            .context("failed to add the centre")?
            .to_string()),
        ServicesCommand::LeadStation { centre, station } => {
            store
                .lead_station(centre, station)
                .await
                .context("failed to link the station")?;
            Ok(format!("centre {centre} leads station {station}"))
        }
        ServicesCommand::AddCommunity { station, name } => Ok(store
            .add_community(station, name.trim())
            .await
            .context("failed to add the community")?
            .to_string()),
        ServicesCommand::SetResident {
            resident,
            lat,
            lon,
            tier,
            community,
        } => {
            store
                .set_resident_services(resident, community, position(lat, lon)?, parse_tier(&tier)?)
                .await
                .context("failed to update the resident")?;
            Ok(format!("resident {resident}: {tier}"))
        }
        ServicesCommand::AddProvider {
            name,
            licence,
            kind,
            lat,
            lon,
            radius_m,
            stations,
            services,
            hours,
            capacity,
        } => {
            let mut provider = NewProvider::new(name.trim(), licence.trim());
            provider.kind = match kind.as_str() {
                "social_organisation" => ProviderKind::SocialOrganisation,
                "company" => ProviderKind::Company,
                other => {
                    bail!("unknown provider kind '{other}': use social_organisation or company")
                }
            };
            provider.location = position(lat, lon)?;
            provider.radius_m = radius_m;
            provider.stations = stations;
            provider.capacity = capacity;
            if let Some(hours) = hours {
                let (opens, closes) = hours
                    .split_once('-')
                    .with_context(|| format!("'{hours}' is not hours like 08:00-20:00"))?;
                provider.opens_minute = parse_minute(opens)?;
                provider.closes_minute = parse_minute(closes)?;
            }
            for service in services {
                let (code, price) = match service.split_once('=') {
                    Some((code, price)) => (
                        code.trim().to_owned(),
                        Some(
                            price
                                .trim()
                                .parse::<i64>()
                                .with_context(|| format!("'{price}' is not a price in fen"))?,
                        ),
                    ),
                    None => (service.trim().to_owned(), None),
                };
                provider.services.push((code, price));
            }
            Ok(store
                .add_provider(&provider)
                .await
                .context("failed to add the provider")?
                .to_string())
        }
        ServicesCommand::AddStaff {
            provider,
            name,
            phone,
        } => Ok(store
            .add_staff(provider, name.trim(), phone.trim())
            .await
            .context("failed to add the staff member")?
            .to_string()),
        ServicesCommand::AddProviderAccount {
            provider,
            username,
            display_name,
            password,
        } => {
            let (username, hash) = crate::admin::new_account(&username, password).await?;
            Ok(store
                .add_provider_account(provider, username.as_str(), display_name.trim(), &hash)
                .await
                .context("failed to add the provider account")?
                .to_string())
        }
        ServicesCommand::Reinstate { provider } => {
            store
                .reinstate_provider(provider, Uuid::nil())
                .await
                .context("failed to reinstate the provider")?;
            Ok(format!("provider {provider} receives offers again"))
        }
        ServicesCommand::TopUp {
            resident,
            fen,
            memo,
        } => {
            let balance = store
                .top_up_card(resident, fen, &memo)
                .await
                .context("the top-up was refused; nothing changed")?;
            Ok(format!("card balance ¥{}", yuan(balance)))
        }
        ServicesCommand::Statement {
            resident,
            provider,
            month,
        } => {
            let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
                .with_context(|| format!("'{month}' is not a month like 2026-11"))?;
            let of = match (resident, provider) {
                (Some(resident), _) => StatementOf::Resident(resident),
                (None, Some(provider)) => StatementOf::Provider(provider),
                (None, None) => bail!("give --resident or --provider"),
            };
            let statement = store
                .statement(of, first)
                .await
                .context("failed to make the statement")?;
            let mut text = format!(
                "{:<36} {:<20} {:<20} {:>10} {:>10} {:>10} {:>10}\n",
                "order", "completed", "service", "price", "subsidy", "resident", "card"
            );
            for line in &statement.lines {
                text.push_str(&format!(
                    "{:<36} {:<20} {:<20} {:>10} {:>10} {:>10} {:>10}\n",
                    line.order_id,
                    line.at.format("%Y-%m-%d %H:%M"),
                    line.service_code,
                    yuan(line.price_fen),
                    yuan(line.subsidy_fen),
                    yuan(line.resident_fen),
                    yuan(line.card_fen)
                ));
            }
            text.push_str(&format!(
                "total: price ¥{}, subsidy ¥{}, resident ¥{} (card ¥{}, due ¥{})",
                yuan(statement.price_fen),
                yuan(statement.subsidy_fen),
                yuan(statement.resident_fen),
                yuan(statement.card_fen),
                yuan(statement.due_fen)
            ));
            Ok(text)
        }
        ServicesCommand::Report {
            from,
            to,
            station,
            csv,
            recomputed,
        } => {
            let source = if recomputed {
                Source::Recomputed
            } else {
                Source::Live
            };
            let stations = store
                .service_report(from, to, station, source)
                .await
                .context("failed to make the report")?;
            if csv {
                return Ok(report_csv(from, to, &stations).trim_end().to_owned());
            }
            let mut text = format!("{from} to {to} (exclusive)\n");
            for s in &stations {
                text.push_str(&format!(
                    "{}: remote services {}, on-site services {}, emergencies {}, service level {}, orders created {}, cancelled {}, escalations {}\n",
                    s.station_name,
                    s.remote_services,
                    s.orders_completed,
                    s.emergencies,
                    s.service_level().map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0)),
                    s.orders_created,
                    s.orders_cancelled,
                    s.escalations
                ));
                for p in &s.providers {
                    text.push_str(&format!(
                        "  {}: offers {}, accepted {}, completed {}, on time {}/{}, rating {}\n",
                        p.provider_name,
                        p.offers,
                        p.accepted,
                        p.completed,
                        p.on_time,
                        p.arrivals,
                        p.average_rating()
                            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
                    ));
                }
            }
            Ok(text.trim_end().to_owned())
        }
        ServicesCommand::Policy { load: None } => {
            let policy = store
                .service_policy()
                .await
                .context("failed to read the policy")?;
            Ok(serde_json::to_string_pretty(&policy)?)
        }
        ServicesCommand::Policy { load: Some(file) } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let policy: ServicePolicy =
                serde_json::from_str(&text).context("the policy is not valid JSON for a policy")?;
            store
                .set_service_policy(&policy)
                .await
                .context("the policy was refused; the one in force is unchanged")?;
            Ok("service policy in force".to_owned())
        }
    }
}
