//! The ledger: double entry in integer fen. A completed order is charged in one transaction:
//! the subsidy share and the resident's share are debited, the provider is credited the price;
//! what the resident's prepaid card can cover is paid from it at once. A deferred trigger
//! refuses any transaction whose entries do not sum to zero; both tables are append-only.

use carebell_domain::orders::{split_charge, Fen};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::network::tier_from_columns;
use crate::{Result, Store, StoreError};

/// How one completed order was charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChargeSummary {
    pub price_fen: i64,
    pub subsidy_fen: i64,
    pub resident_fen: i64,
    /// Of the resident's share, paid from the service card.
    pub card_fen: i64,
}

/// One line of a monthly statement: one completed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    pub order_id: Uuid,
    pub at: DateTime<Utc>,
    pub service_code: String,
    pub resident_id: Uuid,
    pub provider_id: Uuid,
    pub price_fen: i64,
    pub subsidy_fen: i64,
    pub resident_fen: i64,
    pub card_fen: i64,
}

/// A month's statement for a resident or a provider: its lines and their totals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Statement {
    pub lines: Vec<StatementLine>,
    pub price_fen: i64,
    pub subsidy_fen: i64,
    pub resident_fen: i64,
    pub card_fen: i64,
    /// The resident's share not covered by the card: still to pay.
    pub due_fen: i64,
}

impl Statement {
    fn from_lines(lines: Vec<StatementLine>) -> Result<Self> {
        let mut statement = Statement::default();
        let add = |total: &mut i64, value: i64| -> Result<()> {
            *total = total
                .checked_add(value)
                .ok_or_else(|| StoreError::Invalid("a statement total overflows".to_owned()))?;
            Ok(())
        };
        for line in &lines {
            add(&mut statement.price_fen, line.price_fen)?;
            add(&mut statement.subsidy_fen, line.subsidy_fen)?;
            add(&mut statement.resident_fen, line.resident_fen)?;
            add(&mut statement.card_fen, line.card_fen)?;
        }
        statement.due_fen = statement.resident_fen - statement.card_fen;
        statement.lines = lines;
        Ok(statement)
    }
}

/// Whose statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementOf {
    Resident(Uuid),
    Provider(Uuid),
}

async fn insert_entry(
    tx: &mut Transaction<'_, Postgres>,
    transaction_id: Uuid,
    account: &str,
    party_id: Uuid,
    amount_fen: i64,
) -> Result<()> {
    if amount_fen == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account, party_id, amount_fen)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(transaction_id)
    .bind(account)
    .bind(party_id)
    .bind(amount_fen)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Charges a completed order: price from the provider's price list (fixed at acceptance),
/// split per the resident's entitlement tier.
pub(crate) async fn charge_order(
    tx: &mut Transaction<'_, Postgres>,
    order_id: Uuid,
) -> Result<ChargeSummary> {
    let row = sqlx::query(
        "SELECT o.resident_id, o.provider_id, o.price_fen, r.entitlement, r.subsidy_percent,
                r.card_balance_fen
         FROM orders o JOIN residents r ON r.id = o.resident_id
         WHERE o.id = $1 FOR UPDATE OF r",
    )
    .bind(order_id)
    .fetch_one(&mut **tx)
    .await?;
    let resident_id: Uuid = row.try_get("resident_id")?;
    let provider_id: Uuid = row
        .try_get::<Option<Uuid>, _>("provider_id")?
        .ok_or_else(|| StoreError::Refused("the order has no provider to pay".to_owned()))?;
    let price = Fen::new(row.try_get::<Option<i64>, _>("price_fen")?.unwrap_or(0))
        .map_err(|error| StoreError::Invalid(error.to_string()))?;
    let tier = tier_from_columns(
        row.try_get::<String, _>("entitlement")?.as_str(),
        row.try_get("subsidy_percent")?,
    );
    let charge =
        split_charge(price, tier).map_err(|error| StoreError::Invalid(error.to_string()))?;
    let balance: i64 = row.try_get("card_balance_fen")?;
    let card = balance.min(charge.resident.get()).max(0);
    let transaction_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO ledger_transactions (id, kind, order_id, resident_id, memo)
         VALUES ($1, 'order_charge', $2, $3, '')",
    )
    .bind(transaction_id)
    .bind(order_id)
    .bind(resident_id)
    .execute(&mut **tx)
    .await?;
    insert_entry(
        tx,
        transaction_id,
        "subsidy",
        resident_id,
        charge.subsidy.get(),
    )
    .await?;
    insert_entry(
        tx,
        transaction_id,
        "resident",
        resident_id,
        charge.resident.get(),
    )
    .await?;
    insert_entry(tx, transaction_id, "provider", provider_id, -price.get()).await?;
    if card > 0 {
        insert_entry(tx, transaction_id, "card", resident_id, card).await?;
        insert_entry(tx, transaction_id, "resident", resident_id, -card).await?;
        sqlx::query("UPDATE residents SET card_balance_fen = card_balance_fen - $2 WHERE id = $1")
            .bind(resident_id)
            .bind(card)
            .execute(&mut **tx)
            .await?;
    }
    Ok(ChargeSummary {
        price_fen: price.get(),
        subsidy_fen: charge.subsidy.get(),
        resident_fen: charge.resident.get(),
        card_fen: card,
    })
}

impl Store {
    /// Loads money onto a resident's service card (cash received). Refuses negative, zero and
    /// overflowing amounts with nothing changed.
    pub async fn top_up_card(&self, resident_id: Uuid, amount_fen: i64, memo: &str) -> Result<i64> {
        let amount =
            Fen::new(amount_fen).map_err(|error| StoreError::Invalid(error.to_string()))?;
        if amount == Fen::ZERO {
            return Err(StoreError::Invalid(
                "a top-up must be above 0 fen".to_owned(),
            ));
        }
        if memo.chars().count() > 500 {
            return Err(StoreError::Invalid(
                "the memo is longer than 500 characters".to_owned(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let balance: i64 =
            sqlx::query_scalar("SELECT card_balance_fen FROM residents WHERE id = $1 FOR UPDATE")
                .bind(resident_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    what: "resident",
                    id: resident_id.to_string(),
                })?;
        let new_balance = Fen::new(balance)
            .and_then(|balance| balance.checked_add(amount))
            .map_err(|error| {
                StoreError::Invalid(format!("the card balance would overflow: {error}"))
            })?;
        let transaction_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO ledger_transactions (id, kind, resident_id, memo)
             VALUES ($1, 'card_top_up', $2, $3)",
        )
        .bind(transaction_id)
        .bind(resident_id)
        .bind(memo)
        .execute(&mut *tx)
        .await?;
        insert_entry(&mut tx, transaction_id, "cash", resident_id, amount.get()).await?;
        insert_entry(&mut tx, transaction_id, "card", resident_id, -amount.get()).await?;
        sqlx::query("UPDATE residents SET card_balance_fen = $2 WHERE id = $1")
            .bind(resident_id)
            .bind(new_balance.get())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(new_balance.get())
    }

    pub async fn card_balance(&self, resident_id: Uuid) -> Result<i64> {
        sqlx::query_scalar("SELECT card_balance_fen FROM residents WHERE id = $1")
            .bind(resident_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "resident",
                id: resident_id.to_string(),
            })
    }

    /// Transactions whose entries do not sum to zero (the trigger makes this empty; the check
    /// is for auditors and tests).
    pub async fn unbalanced_transactions(&self) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT t.id FROM ledger_transactions t
             LEFT JOIN ledger_entries e ON e.transaction_id = t.id
             GROUP BY t.id HAVING coalesce(sum(e.amount_fen), 0) <> 0",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The sum of all entries of one account (all parties): debits positive.
    pub async fn account_total(&self, account: &str) -> Result<i64> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT sum(amount_fen)::bigint FROM ledger_entries WHERE account = $1",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?;
        Ok(total.unwrap_or(0))
    }

    /// A month's statement from the ledger: the orders charged in the month of `month`, each
    /// judged by its station's local time.
    pub async fn statement(&self, of: StatementOf, month: NaiveDate) -> Result<Statement> {
        let (filter, party) = match of {
            StatementOf::Resident(id) => ("o.resident_id = $1", id),
            StatementOf::Provider(id) => ("o.provider_id = $1", id),
        };
        let rows = sqlx::query(&format!(
            "SELECT t.order_id, t.at, o.service_code, o.resident_id, o.provider_id,
                    coalesce(sum(-e.amount_fen) FILTER (WHERE e.account = 'provider'), 0)::bigint AS price_fen,
                    coalesce(sum(e.amount_fen) FILTER (WHERE e.account = 'subsidy'), 0)::bigint AS subsidy_fen,
                    coalesce(sum(e.amount_fen) FILTER (WHERE e.account = 'resident' AND e.amount_fen > 0), 0)::bigint AS resident_fen,
                    coalesce(sum(e.amount_fen) FILTER (WHERE e.account = 'card'), 0)::bigint AS card_fen
             FROM ledger_transactions t
             JOIN orders o ON o.id = t.order_id
             JOIN stations s ON s.id = o.station_id
             LEFT JOIN ledger_entries e ON e.transaction_id = t.id
             WHERE t.kind = 'order_charge' AND {filter}
               AND date_trunc('month', t.at AT TIME ZONE s.time_zone) = date_trunc('month', $2::date)
             GROUP BY t.id, t.order_id, t.at, o.service_code, o.resident_id, o.provider_id
             ORDER BY t.at, t.id"
        ))
        .bind(party)
        .bind(month)
        .fetch_all(&self.pool)
        .await?;
        let lines = rows
            .into_iter()
            .map(|row| {
                Ok(StatementLine {
                    order_id: row.try_get("order_id")?,
                    at: row.try_get("at")?,
                    service_code: row.try_get("service_code")?,
                    resident_id: row.try_get("resident_id")?,
                    provider_id: row.try_get("provider_id")?,
                    price_fen: row.try_get("price_fen")?,
                    subsidy_fen: row.try_get("subsidy_fen")?,
                    resident_fen: row.try_get("resident_fen")?,
                    card_fen: row.try_get("card_fen")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Statement::from_lines(lines)
    }
}
