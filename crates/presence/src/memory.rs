//! In-memory presence, for a single node (no Redis configured) and for unit tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use crate::{Batch, BoxFuture, Kind, PresenceBackend, Result};

#[derive(Default)]
pub struct InMemoryBackend {
    // A std mutex: never held across an await.
    entries: Mutex<HashMap<(Kind, String), (String, Instant)>>,
}

impl InMemoryBackend {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String), (String, Instant)>> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl PresenceBackend for InMemoryBackend {
    fn apply<'a>(
        &'a self,
        node_id: &'a str,
        ttl: Duration,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let expires = Instant::now() + ttl;
            let mut entries = self.entries();
            for key in &batch.upserts {
                entries.insert(key.clone(), (node_id.to_owned(), expires));
            }
            for key in &batch.removals {
                if entries.get(key).is_some_and(|(owner, _)| owner == node_id) {
                    entries.remove(key);
                }
            }
            Ok(())
        })
    }

    fn lookup<'a>(&'a self, kind: Kind, id: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let now = Instant::now();
            Ok(self
                .entries()
                .get(&(kind, id.to_owned()))
                .filter(|(_, expires)| *expires > now)
                .map(|(node, _)| node.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let backend = InMemoryBackend::default();
        let batch = Batch {
            upserts: vec![(Kind::Device, "tab".to_owned())],
            removals: vec![],
        };
        backend
            .apply("n", Duration::from_secs(10), &batch)
            .await
            .unwrap();
        assert!(backend.lookup(Kind::Device, "tab").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(backend.lookup(Kind::Device, "tab").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_node_does_not_remove_another_nodes_entry() {
        let backend = InMemoryBackend::default();
        let key = (Kind::Device, "tab".to_owned());
        let ttl = Duration::from_secs(10);
        backend
            .apply(
                "new",
                ttl,
                &Batch {
                    upserts: vec![key.clone()],
                    removals: vec![],
                },
            )
            .await
            .unwrap();
        backend
            .apply(
                "old",
                ttl,
                &Batch {
                    upserts: vec![],
                    removals: vec![key],
                },
            )
            .await
            .unwrap();
        assert_eq!(
            backend
                .lookup(Kind::Device, "tab")
                .await
                .unwrap()
                .as_deref(),
            Some("new")
        );
    }
}
