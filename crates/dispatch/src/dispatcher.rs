//! The dispatcher loop: one closed `Event` enum, one loop that matches on it.

use std::sync::Arc;
use std::time::Duration;

use carebell_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Hub;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// How long an offer rings before it goes to the next operator.
    pub ring_timeout: Duration,
    /// How often to look for expired offers even when nothing was announced. Bounds how late
    /// after its deadline a ring timeout takes effect.
    pub sweep_interval: Duration,
    /// A device silent this long (by its durable last-seen time) raises "device offline".
    pub offline_after: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            ring_timeout: Duration::from_secs(20),
            sweep_interval: Duration::from_millis(250),
            offline_after: Duration::from_secs(75),
        }
    }
}

enum Event {
    Wanted,
    Sweep,
    Shutdown,
}

pub struct Dispatcher {
    store: Store,
    hub: Arc<Hub>,
    config: DispatcherConfig,
}

impl Dispatcher {
    pub fn new(store: Store, hub: Arc<Hub>, config: DispatcherConfig) -> Self {
        Self { store, hub, config }
    }

    /// Runs dispatch rounds until `shutdown`. Every node runs one; the store's transactions
    /// (row locks with SKIP LOCKED) keep them from deciding the same thing twice.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        // One ticker across iterations: a steady stream of "wanted" must not starve the sweeps.
        let mut sweeps = tokio::time::interval(self.config.sweep_interval);
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => Event::Shutdown,
                _ = sweeps.tick() => Event::Sweep,
                _ = self.hub.dispatch_wanted() => Event::Wanted,
            };
            match event {
                Event::Shutdown => return,
                Event::Wanted | Event::Sweep => {
                    // The sweeps run on the timer only: new work (a call, an alarm) wants a
                    // matching round, not a pass over every device, cascade and order; under a
                    // thousand alarms a second that difference is the database's whole budget.
                    // Each sweep on its own: one failing must not stop the others.
                    if matches!(event, Event::Sweep) {
                        if let Err(error) = self
                            .store
                            .sweep_offline_devices(self.config.offline_after, 100)
                            .await
                        {
                            tracing::warn!(%error, "offline sweep failed");
                        }
                        if let Err(error) = self.store.sweep_cascades().await {
                            tracing::warn!(%error, "family cascade sweep failed");
                        }
                        if let Err(error) = self.store.sweep_orders(None).await {
                            tracing::warn!(%error, "service order sweep failed");
                        }
                        if let Err(error) = self.store.sweep_schedules().await {
                            tracing::warn!(%error, "schedule sweep failed");
                        }
                    }
                    let round = self.store.dispatch_round(self.config.ring_timeout).await;
                    match round {
                        Ok(round) => {
                            failures = 0;
                            if !round.offered.is_empty() || !round.expired.is_empty() {
                                tracing::debug!(
                                    n_offered = round.offered.len(),
                                    n_expired = round.expired.len(),
                                    "dispatch round"
                                );
                            }
                        }
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            tracing::error!(%error, failures, "dispatch round failed");
                            let backoff = Duration::from_millis(100 * u64::from(failures.min(20)));
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                        }
                    }
                }
            }
        }
    }
}
