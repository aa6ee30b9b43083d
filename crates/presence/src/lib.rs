//! Live presence: which devices and operators are connected, and to which node.
//!
//! Presence is advisory. Rule 2 of the brief: Redis is never in the path that decides whether an
//! alarm is stored or whom a call is offered to. So the connection handlers only touch a local
//! registry (a map behind a mutex, never awaited); a background refresher writes the whole
//! registry to the backend in one pipelined batch per interval, with TTLs, so a node that dies
//! simply lets its entries expire. If Redis is down, the refresher logs and retries; nothing
//! else notices.

mod keys;
mod memory;
mod redis_backend;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use keys::KeySchema;
pub use memory::InMemoryBackend;
pub use redis_backend::RedisBackend;

pub type Result<T, E = PresenceError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence backend unreachable: {0}")]
    Unreachable(String),
    #[error("presence backend error: {0}")]
    Backend(#[from] redis::RedisError),
    #[error("presence backend timed out after {0:?}")]
    Timeout(Duration),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What kind of thing is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Device,
    Operator,
}

/// One batch of changes: entries to (re)write with a TTL, entries to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub upserts: Vec<(Kind, String)>,
    pub removals: Vec<(Kind, String)>,
}

/// Where presence is kept across nodes.
pub trait PresenceBackend: Send + Sync + 'static {
    /// Writes `upserts` as owned by `node_id` with `ttl`, and deletes `removals` if this node
    /// still owns them, all in one round trip.
    fn apply<'a>(
        &'a self,
        node_id: &'a str,
        ttl: Duration,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<()>>;
    /// The node a device or operator is connected to, if any.
    fn lookup<'a>(&'a self, kind: Kind, id: &'a str) -> BoxFuture<'a, Result<Option<String>>>;
}

#[derive(Default)]
struct Registry {
    present: HashMap<(Kind, String), u32>,
    removed: Vec<(Kind, String)>,
}

/// A node's presence handle: cheap, synchronous updates from connection handlers; batched
/// writes to the backend from [`Presence::run_refresher`].
#[derive(Clone)]
pub struct Presence {
    node_id: Arc<str>,
    backend: Arc<dyn PresenceBackend>,
    // A std mutex: held only for map updates, never across an await.
    registry: Arc<Mutex<Registry>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Presence {
    pub fn new(node_id: &str, backend: Arc<dyn PresenceBackend>) -> Self {
        Self {
            node_id: node_id.into(),
            backend,
            registry: Arc::default(),
            changed: Arc::default(),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        // A poisoned registry only means a panic elsewhere mid-update of a counter map; the map
        // is still usable, and presence is advisory.
        let mut guard = match self.registry.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Marks something connected to this node. Counted, so two sessions of the same operator
    /// keep it present until both end.
    pub fn connected(&self, kind: Kind, id: &str) {
        self.with_registry(|registry| {
            *registry.present.entry((kind, id.to_owned())).or_default() += 1;
        });
        self.changed.notify_one();
    }

    pub fn disconnected(&self, kind: Kind, id: &str) {
        self.with_registry(|registry| {
            let key = (kind, id.to_owned());
            if let Some(count) = registry.present.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    registry.present.remove(&key);
                    registry.removed.push(key);
                }
            }
        });
        self.changed.notify_one();
    }

    /// How many distinct devices or operators this node holds.
    pub fn local_count(&self, kind: Kind) -> usize {
        self.with_registry(|registry| registry.present.keys().filter(|(k, _)| *k == kind).count())
    }

    /// Where something is connected, according to the backend.
    pub async fn lookup(&self, kind: Kind, id: &str) -> Result<Option<String>> {
        self.backend.lookup(kind, id).await
    }

    /// Writes the whole local registry (and pending removals) to the backend now.
    pub async fn flush(&self, ttl: Duration) -> Result<()> {
        let batch = self.with_registry(|registry| Batch {
            upserts: registry.present.keys().cloned().collect(),
            removals: std::mem::take(&mut registry.removed),
        });
        let result = self.backend.apply(&self.node_id, ttl, &batch).await;
        if result.is_err() {
            // Keep the removals for the next attempt; upserts are rewritten every time anyway.
            self.with_registry(|registry| {
                let still_absent: Vec<_> = batch
                    .removals
                    .into_iter()
                    .filter(|key| !registry.present.contains_key(key))
                    .collect();
                registry.removed.extend(still_absent);
            });
        }
        result
    }

    /// Refreshes the backend every `interval` (and soon after a change, at most every
    /// `min_gap`), with entries living `3 × interval`, until `shutdown` resolves; then removes
    /// this node's entries.
    pub async fn run_refresher(
        self,
        interval: Duration,
        min_gap: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let ttl = interval * 3;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures: u32 = 0;
        loop {
            match self.flush(ttl).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "presence backend reachable again");
                    }
                    failures = 0;
                }
                Err(error) => {
                    failures += 1;
                    // Log the first failure and then every tenth, to keep an outage readable.
                    if failures == 1 || failures % 10 == 0 {
                        tracing::warn!(%error, failures, "presence refresh failed; presence is degraded");
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
                _ = self.changed.notified() => {
                    tokio::time::sleep(min_gap).await;
                }
            }
        }
        let removals = self.with_registry(|registry| {
            let mut all: Vec<_> = registry.present.drain().map(|(key, _)| key).collect();
            all.append(&mut registry.removed);
            all
        });
        let batch = Batch {
            upserts: Vec::new(),
            removals,
        };
        if let Err(error) = self.backend.apply(&self.node_id, ttl, &batch).await {
            tracing::warn!(%error, "could not remove this node's presence on shutdown; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connected_device_is_found_until_it_disconnects() {
        let backend = Arc::new(InMemoryBackend::default());
        let presence = Presence::new("node-a", backend);
        presence.connected(Kind::Device, "tab-1");
        presence.flush(Duration::from_secs(30)).await.unwrap();
        assert_eq!(
            presence
                .lookup(Kind::Device, "tab-1")
                .await
                .unwrap()
                .as_deref(),
            Some("node-a")
        );
        presence.disconnected(Kind::Device, "tab-1");
        presence.flush(Duration::from_secs(30)).await.unwrap();
        assert_eq!(presence.lookup(Kind::Device, "tab-1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_operator_with_two_consoles_stays_present_until_both_close() {
        let presence = Presence::new("node-a", Arc::new(InMemoryBackend::default()));
        presence.connected(Kind::Operator, "op");
        presence.connected(Kind::Operator, "op");
        presence.disconnected(Kind::Operator, "op");
        presence.flush(Duration::from_secs(30)).await.unwrap();
        assert!(presence
            .lookup(Kind::Operator, "op")
            .await
            .unwrap()
            .is_some());
        assert_eq!(presence.local_count(Kind::Operator), 1);
    }
}
