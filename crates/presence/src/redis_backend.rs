//! Presence in Redis: one pipelined round trip per batch, bounded by a timeout, with a lazy
//! connection that is dropped on any error and re-made on the next call, so a Redis that is
//! down at start-up or restarts later costs nothing but degraded presence.

use redis::aio::MultiplexedConnection;
use std::time::Duration;
use tokio::sync::Mutex;

use crate::{Batch, BoxFuture, KeySchema, Kind, PresenceBackend, PresenceError, Result};

/// Deletes a key only if it still names this node, so a node that lost a device to another
/// node never removes the other node's entry.
const DELETE_IF_OWNER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct RedisBackend {
    client: redis::Client,
    keys: KeySchema,
    timeout: Duration,
    // A tokio mutex: held across the connect await so only one task reconnects at a time.
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisBackend {
    /// Parses the URL; does not connect (that happens on first use).
    pub fn new(url: &str, keys: KeySchema, timeout: Duration) -> Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            keys,
            timeout,
            connection: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection =
            tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| PresenceError::Timeout(self.timeout))?
                .map_err(|error| PresenceError::Unreachable(error.to_string()))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn forget_connection(&self) {
        *self.connection.lock().await = None;
    }

    async fn run<T, F>(&self, operation: F) -> Result<T>
    where
        F: AsyncFnOnce(MultiplexedConnection) -> redis::RedisResult<T>,
    {
        let connection = self.connection().await?;
        let outcome = tokio::time::timeout(self.timeout, operation(connection)).await;
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                self.forget_connection().await;
                Err(PresenceError::Backend(error))
            }
            Err(_) => {
                self.forget_connection().await;
                Err(PresenceError::Timeout(self.timeout))
            }
        }
    }
}

impl PresenceBackend for RedisBackend {
    fn apply<'a>(
        &'a self,
        node_id: &'a str,
        ttl: Duration,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if batch.upserts.is_empty() && batch.removals.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            let ttl_secs = ttl.as_secs().max(1);
            for (kind, id) in &batch.upserts {
                pipe.cmd("SET")
                    .arg(self.keys.presence(*kind, id))
                    .arg(node_id)
                    .arg("EX")
                    .arg(ttl_secs)
                    .ignore();
            }
            // Plain EVAL, not EVALSHA: a pipeline cannot load a script that Redis has not
            // cached (after a restart, say), and the script is tiny.
            for (kind, id) in &batch.removals {
                pipe.cmd("EVAL")
                    .arg(DELETE_IF_OWNER)
                    .arg(1)
                    .arg(self.keys.presence(*kind, id))
                    .arg(node_id)
                    .ignore();
            }
            self.run(async move |mut connection| pipe.query_async::<()>(&mut connection).await)
                .await
        })
    }

    fn lookup<'a>(&'a self, kind: Kind, id: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let key = self.keys.presence(kind, id);
            self.run(async move |mut connection| {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<String>>(&mut connection)
                    .await
            })
            .await
        })
    }
}
