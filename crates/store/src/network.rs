//! The provider network's master data: centres, stations and communities, the service
//! catalogue, providers with their coverage, hours, capacity, prices, staff and accounts, the
//! residents' locations and entitlements, and the service policy.

use std::time::Duration;

use carebell_domain::orders::{EntitlementTier, Fen, GeoPoint, ServicePolicy, DEFAULT_CATALOGUE};
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::admin::refuse_constraint;
use crate::{Result, Store, StoreError};

/// Social organisation (社会组织) or company.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    SocialOrganisation,
    Company,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::SocialOrganisation => "social_organisation",
            ProviderKind::Company => "company",
        }
    }
}

/// A provider to register.
#[derive(Debug, Clone)]
pub struct NewProvider {
    pub name: String,
    pub kind: ProviderKind,
    pub licence_no: String,
    /// Its base, for distances and radius coverage.
    pub location: Option<GeoPoint>,
    /// Serves anyone within this many metres of `location` (0: by station only).
    pub radius_m: u32,
    /// Serves every resident of these stations.
    pub stations: Vec<Uuid>,
    /// Service codes it offers, each with its price (None: the catalogue's default).
    pub services: Vec<(String, Option<i64>)>,
    /// Working hours, local minutes of the day; equal means around the clock.
    pub opens_minute: u32,
    pub closes_minute: u32,
    /// Orders held at once.
    pub capacity: u32,
}

impl NewProvider {
    /// A provider open around the clock with capacity 5, covering nothing yet.
    pub fn new(name: &str, licence_no: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: ProviderKind::SocialOrganisation,
            licence_no: licence_no.to_owned(),
            location: None,
            radius_m: 0,
            stations: Vec::new(),
            services: Vec::new(),
            opens_minute: 0,
            closes_minute: 0,
            capacity: 5,
        }
    }
}

/// One item of the service catalogue.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ServiceItemRow {
    pub code: String,
    pub name_zh: String,
    pub name_en: String,
    pub default_price_fen: i64,
    pub typical_minutes: i32,
}

/// A signed-in provider account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSession {
    pub account_id: Uuid,
    pub provider_id: Uuid,
}

/// A provider's standing, as its staff and the supervisors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRow {
    pub id: Uuid,
    pub name: String,
    pub rating_sum: i64,
    pub rating_count: i64,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_reason: String,
}

pub(crate) fn tier_columns(tier: EntitlementTier) -> (&'static str, i32) {
    match tier {
        EntitlementTier::Free => ("free", 100),
        EntitlementTier::Market => ("market", 0),
        EntitlementTier::Subsidised { subsidy_percent } => (
            "subsidised",
            i32::try_from(subsidy_percent).unwrap_or(i32::MAX),
        ),
    }
}

pub(crate) fn tier_from_columns(entitlement: &str, subsidy_percent: i32) -> EntitlementTier {
    match entitlement {
        "free" => EntitlementTier::Free,
        "subsidised" => EntitlementTier::Subsidised {
            subsidy_percent: u32::try_from(subsidy_percent).unwrap_or(0),
        },
        _ => EntitlementTier::Market,
    }
}

fn check_minute(name: &str, minute: u32) -> Result<i32> {
    if minute >= 1440 {
        return Err(StoreError::Invalid(format!(
            "{name} must be a minute of the day (0 to 1439), not {minute}"
        )));
    }
    Ok(i32::try_from(minute).unwrap_or_default())
}

impl Store {
    /// Puts the default catalogue in place; items already there (perhaps with a programme's
    /// own prices) are left alone.
    pub(crate) async fn ensure_catalogue(&self) -> Result<()> {
        for item in DEFAULT_CATALOGUE {
            sqlx::query(
                "INSERT INTO service_items (code, name_zh, name_en, default_price_fen, typical_minutes)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO NOTHING",
            )
            .bind(item.code)
            .bind(item.name_zh)
            .bind(item.name_en)
            .bind(item.default_price_fen)
            .bind(i32::try_from(item.typical_minutes).unwrap_or(i32::MAX))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    pub async fn catalogue(&self) -> Result<Vec<ServiceItemRow>> {
        Ok(sqlx::query_as(
            "SELECT code, name_zh, name_en, default_price_fen, typical_minutes
             FROM service_items ORDER BY code",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn add_centre(&self, name: &str) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO centres (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|error| refuse_constraint(error, "centre"))?;
        Ok(id)
    }

    /// A centre leads the station (中心带站).
    pub async fn lead_station(&self, centre_id: Uuid, station_id: Uuid) -> Result<()> {
        let updated = sqlx::query("UPDATE stations SET centre_id = $1 WHERE id = $2")
            .bind(centre_id)
            .bind(station_id)
            .execute(&self.pool)
            .await
            .map_err(|error| refuse_constraint(error, "station"))?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound {
                what: "station",
                id: station_id.to_string(),
            });
        }
        Ok(())
    }

    pub async fn add_community(&self, station_id: Uuid, name: &str) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO communities (id, station_id, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(station_id)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|error| refuse_constraint(error, "community"))?;
        Ok(id)
    }

    /// Where a resident lives, their community and what they pay of a service's price.
    pub async fn set_resident_services(
        &self,
        resident_id: Uuid,
        community_id: Option<Uuid>,
        location: Option<GeoPoint>,
        tier: EntitlementTier,
    ) -> Result<()> {
        if let EntitlementTier::Subsidised { subsidy_percent } = tier {
            if subsidy_percent > 100 {
                return Err(StoreError::Invalid(format!(
                    "a subsidy share must be between 0 and 100 percent, not {subsidy_percent}"
                )));
            }
        }
        let (entitlement, percent) = tier_columns(tier);
        let updated = sqlx::query(
            "UPDATE residents SET community_id = $2, lat = $3, lon = $4, entitlement = $5,
                    subsidy_percent = $6
             WHERE id = $1",
        )
        .bind(resident_id)
        .bind(community_id)
        .bind(location.map(|p| p.lat))
        .bind(location.map(|p| p.lon))
        .bind(entitlement)
        .bind(percent)
        .execute(&self.pool)
        .await
        .map_err(|error| refuse_constraint(error, "resident"))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound {
                what: "resident",
                id: resident_id.to_string(),
            });
        }
        Ok(())
    }

    pub async fn add_provider(&self, provider: &NewProvider) -> Result<Uuid> {
        let opens = check_minute("opens_minute", provider.opens_minute)?;
        let closes = check_minute("closes_minute", provider.closes_minute)?;
        if provider.radius_m > 0 && provider.location.is_none() {
            return Err(StoreError::Invalid(
                "a coverage radius needs the provider's position".to_owned(),
            ));
        }
        let id = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO providers (id, name, kind, licence_no, lat, lon, radius_m, opens_minute,
                                    closes_minute, capacity)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(&provider.name)
        .bind(provider.kind.as_str())
        .bind(&provider.licence_no)
        .bind(provider.location.map(|p| p.lat))
        .bind(provider.location.map(|p| p.lon))
        .bind(i32::try_from(provider.radius_m).unwrap_or(i32::MAX))
        .bind(opens)
        .bind(closes)
        .bind(i32::try_from(provider.capacity).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|error| refuse_constraint(error, "provider"))?;
        for station_id in &provider.stations {
            sqlx::query("INSERT INTO provider_stations (provider_id, station_id) VALUES ($1, $2)")
                .bind(id)
                .bind(station_id)
                .execute(&mut *tx)
                .await
                .map_err(|error| refuse_constraint(error, "provider coverage"))?;
        }
        for (code, price) in &provider.services {
            set_price(&mut tx, id, code, *price).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Sets what a provider charges for a service (None: the catalogue's default), adding the
    /// service to its catalogue.
    pub async fn set_provider_price(
        &self,
        provider_id: Uuid,
        service_code: &str,
        price_fen: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        set_price(&mut tx, provider_id, service_code, price_fen).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_staff(&self, provider_id: Uuid, name: &str, phone: &str) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO provider_staff (id, provider_id, name, phone) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(provider_id)
        .bind(name)
        .bind(phone)
        .execute(&self.pool)
        .await
        .map_err(|error| refuse_constraint(error, "staff member"))?;
        Ok(id)
    }

    /// A provider's active staff: (id, name), by name.
    pub async fn provider_staff(&self, provider_id: Uuid) -> Result<Vec<(Uuid, String)>> {
        Ok(sqlx::query_as(
            "SELECT id, name FROM provider_staff WHERE provider_id = $1 AND active ORDER BY name, id",
        )
        .bind(provider_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// `password_hash` is a PHC string (argon2id).
    pub async fn add_provider_account(
        &self,
        provider_id: Uuid,
        username: &str,
        display_name: &str,
        password_hash: &str,
    ) -> Result<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO provider_accounts (id, provider_id, username, display_name, password_hash)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(provider_id)
        .bind(username)
        .bind(display_name)
        .bind(password_hash)
        .execute(&self.pool)
        .await
        .map_err(|error| refuse_constraint(error, "provider account"))?;
        Ok(id)
    }

    /// A provider account by username: (account, provider, display name, password hash).
    pub async fn provider_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(ProviderSession, String, String)>> {
        let row = sqlx::query(
            "SELECT id, provider_id, display_name, password_hash FROM provider_accounts
             WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok((
                ProviderSession {
                    account_id: row.try_get("id")?,
                    provider_id: row.try_get("provider_id")?,
                },
                row.try_get("display_name")?,
                row.try_get("password_hash")?,
            ))
        })
        .transpose()
    }

    pub async fn create_provider_session(
        &self,
        account_id: Uuid,
        token_hash: &[u8],
        ttl: Duration,
    ) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO provider_sessions (token_hash, account_id, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at",
        )
        .bind(token_hash)
        .bind(account_id)
        .bind(ttl.as_secs_f64())
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn provider_session(&self, token_hash: &[u8]) -> Result<Option<ProviderSession>> {
        let row = sqlx::query(
            "SELECT a.id, a.provider_id FROM provider_sessions s
             JOIN provider_accounts a ON a.id = s.account_id
             WHERE s.token_hash = $1 AND s.expires_at > now()",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ProviderSession {
                account_id: row.try_get("id")?,
                provider_id: row.try_get("provider_id")?,
            })
        })
        .transpose()
    }

    pub async fn provider(&self, provider_id: Uuid) -> Result<ProviderRow> {
        let row = sqlx::query(
            "SELECT id, name, rating_sum, rating_count, suspended_at, suspended_reason
             FROM providers WHERE id = $1",
        )
        .bind(provider_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "provider",
            id: provider_id.to_string(),
        })?;
        Ok(ProviderRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            rating_sum: row.try_get("rating_sum")?,
            rating_count: row.try_get("rating_count")?,
            suspended_at: row.try_get("suspended_at")?,
            suspended_reason: row.try_get("suspended_reason")?,
        })
    }

    pub async fn service_policy(&self) -> Result<ServicePolicy> {
        let mut conn = self.pool.acquire().await?;
        read_policy(&mut conn).await
    }

    /// Replaces the service policy, whole and validated.
    pub async fn set_service_policy(&self, policy: &ServicePolicy) -> Result<()> {
        policy
            .validate()
            .map_err(|error| StoreError::Invalid(error.to_string()))?;
        let json = serde_json::to_value(policy)
            .map_err(|error| StoreError::Invalid(format!("unserializable policy: {error}")))?;
        sqlx::query("UPDATE service_policy SET policy = $1")
            .bind(json)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

pub(crate) async fn read_policy(conn: &mut sqlx::PgConnection) -> Result<ServicePolicy> {
    let json: serde_json::Value = sqlx::query_scalar("SELECT policy FROM service_policy")
        .fetch_one(&mut *conn)
        .await?;
    serde_json::from_value(json).map_err(|error| {
        StoreError::Refused(format!("the stored service policy is unreadable: {error}"))
    })
}

async fn set_price(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    provider_id: Uuid,
    service_code: &str,
    price_fen: Option<i64>,
) -> Result<()> {
    let default: Option<i64> =
        sqlx::query_scalar("SELECT default_price_fen FROM service_items WHERE code = $1")
            .bind(service_code)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(default) = default else {
        return Err(StoreError::Invalid(format!(
            "unknown service category '{}'",
            service_code.chars().take(64).collect::<String>()
        )));
    };
    let price = Fen::new(price_fen.unwrap_or(default))
        .map_err(|error| StoreError::Invalid(error.to_string()))?;
    sqlx::query(
        "INSERT INTO provider_services (provider_id, service_code, price_fen) VALUES ($1, $2, $3)
         ON CONFLICT (provider_id, service_code) DO UPDATE SET price_fen = EXCLUDED.price_fen",
    )
    .bind(provider_id)
    .bind(service_code)
    .bind(price.get())
    .execute(&mut **tx)
    .await
    .map_err(|error| refuse_constraint(error, "provider price"))?;
    Ok(())
}
