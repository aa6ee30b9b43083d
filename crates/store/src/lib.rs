//! PostgreSQL, the source of truth: migrations, and every read and write the system makes.
//!
//! Decisions that must hold across nodes (who is offered a call, who wins an acceptance, when a
//! ring times out) are single transactions here, ordered by row locks and timed by the database
//! clock. Every transaction that changes something a connected client must hear about ends with
//! a `pg_notify` on [`NOTIFY_CHANNEL`], delivered by PostgreSQL only after the commit.

mod admin;
mod alarm_batch;
mod calls;
mod devices;
mod family;
mod ledger;
mod network;
mod observability;
mod operators;
mod orders;
mod outbox;
mod proactive;
mod reports;
mod residents;
mod routing;
mod rtc;
mod supervision;
mod trust;
mod webhooks;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

pub use admin::{Arrival, NewDevice, NewResident};
pub use alarm_batch::NewAlarm;
pub use calls::{
    AcceptedCall, AlarmOutcome, CallRow, CancelOutcome, CreatedCall, DispatchRound, EventRow,
    NewOffer, OfferRow, TransferTarget,
};
pub use devices::{DEVICE_BACK, DEVICE_OFFLINE};
pub use family::{CascadeRow, FamilyAlert, NewContact, RelativeRow, MAX_FAMILY_MESSAGE_CHARS};
pub use ledger::{ChargeSummary, Statement, StatementLine, StatementOf};
pub use network::{NewProvider, ProviderKind, ProviderRow, ProviderSession, ServiceItemRow};
pub use observability::ObservedState;
pub use operators::{OperatorCredentials, OperatorSession};
pub use orders::{
    CreatedOrder, NewOrder, OrderRow, OrderSweep, ProgressReport, ProviderSuggestion,
};
pub use outbox::{
    CallUpdatePayload, NoticePayload, OrderUpdatePayload, OutboxAck, OutboxItem, OutboxPayload,
    OutboxRead,
};
pub use proactive::{
    ContentDelivery, ContentPayload, NewContent, NewSchedule, ReminderPayload, ScheduleKind,
    ScheduleSweep, UntestedTablet, CONTENT_KINDS, MAX_CONTACTS_TOLD, REMINDER_RETRY_SECS,
};
pub use reports::{report_csv, ProviderFigures, Source, StationFigures};
pub use residents::{ContactRow, DeviceSummaryRow, InteractionRow, ResidentRecord};
pub use rtc::{MAX_RTC_PAYLOAD_BYTES, RTC_KINDS};
pub use supervision::{
    OperatorRow, QueueFigures, QueueStatus, StatisticsCounts, WaitingRow, SHORT_ABANDON_SECS,
};
pub use trust::{AuditEntry, Erasure, MAX_SIGN_IN_FAILURES, SIGN_IN_LOCKOUT};
pub use webhooks::WebhookDelivery;

/// The PostgreSQL channel every node listens on.
pub const NOTIFY_CHANNEL: &str = "carebell";

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("the offer is no longer open: it was {state}")]
    OfferNotOpen { state: String },
    #[error("the offer was made to another operator")]
    NotYourOffer,
    #[error("the call is {state} and not held by this operator")]
    CallNotHeld { state: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Transition(#[from] carebell_domain::TransitionError),
    #[error(transparent)]
    OrderTransition(#[from] carebell_domain::orders::OrderTransitionError),
    /// Bad input: refused with nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// Acting on something that belongs to someone else.
    #[error("{0}")]
    Forbidden(String),
    /// No provider can serve the resident.
    #[error(transparent)]
    NoProvider(carebell_domain::orders::NoMatch),
}

/// What a node must tell its connected clients after a commit. Sent with `pg_notify`, so every
/// node hears it and each delivers only to the clients it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Notification {
    /// New work is waiting: a dispatcher should run a round.
    Dispatch,
    /// A new offer for an operator.
    Offer { offer_id: Uuid, operator_id: Uuid },
    /// An offer is gone (expired, taken, call cancelled).
    OfferWithdrawn {
        offer_id: Uuid,
        operator_id: Uuid,
        call_id: Uuid,
        reason: String,
    },
    /// A call changed state; the operator holding it (if any) should hear it.
    CallChanged {
        call_id: Uuid,
        operator_id: Option<Uuid>,
        state: String,
        disposition: Option<String>,
    },
    /// A device has new messages in its outbox.
    DeviceOutbox { device_id: String },
    /// A device was revoked: whichever node holds its session ends it.
    DeviceRevoked { device_id: String },
    /// The system changed an operator's status (paused after missed offers, wrap-up over).
    OperatorStatus {
        operator_id: Uuid,
        status: String,
        reason: String,
    },
    /// An item waited too long: supervisors must look.
    SupervisorAlert { call_id: Uuid, reason: String },
    /// An emergency nobody has answered for long: every console shows it, not only the
    /// supervisors'.
    EmergencyUnanswered { call_id: Uuid, reason: String },
    /// A provider's offers or orders changed: its open feeds should re-read.
    ProviderFeed { provider_id: Uuid },
    /// WebRTC signalling from an operator's console to the tablet of the call it holds.
    RtcToDevice {
        device_id: String,
        call_id: Uuid,
        kind: String,
        payload: String,
    },
    /// WebRTC signalling from a tablet to the console of the operator holding its call.
    RtcToOperator {
        operator_id: Uuid,
        call_id: Uuid,
        kind: String,
        payload: String,
    },
    /// A service order missed its SLA: the station's supervisors must look.
    OrderEscalated {
        order_id: Uuid,
        station_id: Uuid,
        reason: String,
    },
}

/// The handle on PostgreSQL shared by every part of a node.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects a pool; fails fast (within `connect_timeout`) if the database is unreachable.
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_as(database_url, max_connections, None).await
    }

    /// As [`Store::connect`], with every connection switched to `role` (`SET ROLE`) first: the
    /// application's own role, which owns nothing and cannot alter the append-only logs.
    pub async fn connect_as(
        database_url: &str,
        max_connections: u32,
        role: Option<&str>,
    ) -> Result<Self> {
        let options = PgConnectOptions::from_str(database_url)?.application_name("carebell");
        Self::connect_with(options, max_connections, role).await
    }

    /// As [`Store::connect_as`], for the device batches (alarms, arrivals, key lookups, outbox
    /// reads and acknowledgements, last-seen writes): every statement on these connections runs
    /// a generic plan, made once per connection.
    ///
    /// Those statements take their rows as arrays. Planned for each execution's arrays (a
    /// custom plan), a batch of a few rows always looks cheaper than the generic plan, so
    /// PostgreSQL re-planned every execution: 1.4 ms for each alarm batch, and planning was a
    /// fifth of the database's statement time under a flood of alarms. Their generic plans are the same
    /// index lookups. The other pools keep PostgreSQL's choice: some of their queries bind a
    /// value that a partial index's predicate names, which only a custom plan can use.
    pub async fn connect_for_batches(
        database_url: &str,
        max_connections: u32,
        role: Option<&str>,
    ) -> Result<Self> {
        let options = PgConnectOptions::from_str(database_url)?
            .application_name("carebell-batches")
            .options([("plan_cache_mode", "force_generic_plan")]);
        Self::connect_with(options, max_connections, role).await
    }

    async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
        role: Option<&str>,
    ) -> Result<Self> {
        let mut pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5));
        if let Some(role) = role.filter(|role| !role.is_empty()) {
            let statement: std::sync::Arc<str> =
                format!("SET ROLE \"{}\"", role.replace('"', "\"\"")).into();
            pool = pool.after_connect(move |connection, _| {
                let statement = std::sync::Arc::clone(&statement);
                Box::pin(async move {
                    sqlx::Executor::execute(connection, &*statement).await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await?;
        Ok(Self { pool })
    }

    /// Closes the pool (waiting for connections in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations embedded in this crate; safe to run on every start and from
    /// several nodes at once (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        self.ensure_catalogue().await
    }

    /// All events of one call, oldest first.
    pub async fn call_events(&self, call_id: Uuid) -> Result<Vec<EventRow>> {
        Ok(sqlx::query_as::<_, EventRow>(
            "SELECT id, at, kind, call_id, offer_id, operator_id, device_id, detail
             FROM events WHERE call_id = $1 ORDER BY id",
        )
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Store {
    /// All events of one service order, oldest first: (kind, detail).
    pub async fn order_events(&self, order_id: Uuid) -> Result<Vec<(String, serde_json::Value)>> {
        Ok(
            sqlx::query_as("SELECT kind, detail FROM events WHERE order_id = $1 ORDER BY id")
                .bind(order_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

/// A one-row subquery to join into a statement sent on its own: the statement's commit then
/// does not wait for its WAL to reach the disk. `set_config(.., true)` lasts until the
/// transaction ends, and a statement on its own commits as it ends, reading the setting then;
/// one round trip, where `BEGIN`, `SET LOCAL synchronous_commit = off`, the statement and
/// `COMMIT` took four.
///
/// Only for writes whose loss in a PostgreSQL crash (at most its last few hundred
/// milliseconds, `wal_writer_delay` three times over) errs towards alarm or repeats a message:
/// - devices' last-seen times, rewritten within seconds: a device then looks silent for longer
///   than it was, never shorter, so supervision may report it offline early but never misses
///   one (rule 7). In a reconnect storm half of the arrivals' time in PostgreSQL was waiting
///   for the flush, holding the few batch slots a process has;
/// - tablets' acknowledgements of outbox messages: a lost one delivers its message again, as
///   a link that drops between a delivery and its acknowledgement already does. At a thousand
///   alarms a second they were the third busiest statement, mostly waiting for the flush.
///
/// Alarms, calls and events never use this.
pub const UNFLUSHED: &str = "(SELECT set_config('synchronous_commit', 'off', true)) AS unflushed";

/// Appends one event to the log inside the caller's transaction.
pub(crate) async fn append_event(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    call_id: Option<Uuid>,
    offer_id: Option<Uuid>,
    operator_id: Option<Uuid>,
    device_id: Option<&str>,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (kind, call_id, offer_id, operator_id, device_id, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(kind)
    .bind(call_id)
    .bind(offer_id)
    .bind(operator_id)
    .bind(device_id)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends events in one statement, in order: (kind, call, device, detail) each. What
/// [`append_event`] does for one, for a batch (no offer or operator).
pub(crate) async fn append_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[(&str, Option<Uuid>, Option<String>, serde_json::Value)],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (kind, call_id, device_id, detail)
         SELECT e.kind, e.call_id, e.device_id, e.detail
         FROM unnest($1::text[], $2::uuid[], $3::text[], $4::jsonb[])
              WITH ORDINALITY AS e(kind, call_id, device_id, detail, n)
         ORDER BY e.n",
    )
    .bind(events.iter().map(|event| event.0).collect::<Vec<_>>())
    .bind(events.iter().map(|event| event.1).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|event| event.2.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|event| event.3.clone())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// [`notify`] for several notifications, in one statement (PostgreSQL folds repeats within a
/// transaction into one).
pub(crate) async fn notify_all(
    tx: &mut Transaction<'_, Postgres>,
    notifications: &[Notification],
) -> Result<()> {
    if notifications.is_empty() {
        return Ok(());
    }
    let payloads = notifications
        .iter()
        .map(serde_json::to_string)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| StoreError::Refused(format!("unserializable notification: {error}")))?;
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(NOTIFY_CHANNEL)
        .bind(&payloads)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Queues a notification that PostgreSQL delivers to every listening node after the commit.
pub(crate) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    notification: &Notification,
) -> Result<()> {
    notify_all(tx, std::slice::from_ref(notification)).await
}

/// A subscription to [`NOTIFY_CHANNEL`] on its own connection.
pub struct Listener {
    inner: sqlx::postgres::PgListener,
}

/// What the listener heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Notification(Notification),
    /// The listening connection was lost and re-made: notifications may have been missed, so
    /// everyone should re-read what they care about.
    Resync,
}

impl Store {
    pub async fn listen(&self) -> Result<Listener> {
        let mut inner = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        inner.listen(NOTIFY_CHANNEL).await?;
        Ok(Listener { inner })
    }
}

impl Listener {
    /// Waits for the next notification. Reconnects by itself after a lost connection and then
    /// reports [`Heard::Resync`]. Unparseable payloads are logged and skipped.
    pub async fn recv(&mut self) -> Result<Heard> {
        loop {
            match self.inner.try_recv().await? {
                None => return Ok(Heard::Resync),
                Some(message) => match serde_json::from_str(message.payload()) {
                    Ok(notification) => return Ok(Heard::Notification(notification)),
                    Err(error) => {
                        tracing::warn!(%error, "ignoring an unparseable notification");
                    }
                },
            }
        }
    }
}
