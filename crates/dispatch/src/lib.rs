//! The dispatch engine: when to run the routing decisions (which live in `store` as single
//! transactions on the database clock), and the node-local hub that hands what PostgreSQL
//! announces to the sessions this node holds.
//!
//! Knows nothing of tonic or tungstenite: sessions subscribe to the [`Hub`] and translate.

mod dispatcher;
mod hub;
pub mod webhook;

pub use dispatcher::{Dispatcher, DispatcherConfig};
pub use hub::{DeviceRegistration, DeviceSignal, Hub, OperatorEvent, OperatorSubscription};

/// Forwards everything PostgreSQL announces on the Carebell channel to `hub` until `shutdown`.
/// Reconnects (with a pause) when the listening connection fails.
pub async fn run_listener(
    store: carebell_store::Store,
    hub: std::sync::Arc<Hub>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let mut listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            listener = store.listen() => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for notifications; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        // Whatever happened while we were not listening, look again.
        hub.resync();
        loop {
            let heard = tokio::select! {
                _ = shutdown.cancelled() => return,
                heard = listener.recv() => heard,
            };
            match heard {
                Ok(carebell_store::Heard::Notification(notification)) => hub.deliver(notification),
                Ok(carebell_store::Heard::Resync) => hub.resync(),
                Err(error) => {
                    tracing::error!(%error, "notification listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Writes the durable last-seen times of the devices this node holds: every `interval` it
/// writes, in one statement, the devices not written for `write_every` (a new session's device
/// counts as written by its arrival, unless that failed),
/// each as "silent for so long" applied to the database's clock. Offline supervision reads
/// these times, so it holds across nodes and without Redis; `write_every` must stay well under
/// the offline threshold.
pub async fn run_last_seen_refresher(
    store: carebell_store::Store,
    hub: std::sync::Arc<Hub>,
    interval: std::time::Duration,
    write_every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let silences = hub.device_silences_due(write_every);
        if silences.is_empty() {
            continue;
        }
        // Rows another transaction holds (an arrival, another node) are skipped, not waited
        // for, and written at the next pass; so are all of them if the write failed.
        match store.devices_seen_unless_busy(&silences).await {
            Ok(busy) => hub.device_silences_due_again(&busy),
            Err(error) => {
                tracing::warn!(%error, n_devices = silences.len(), "could not record last-seen times");
                let all: Vec<String> = silences.iter().map(|(id, _)| id.clone()).collect();
                hub.device_silences_due_again(&all);
                continue;
            }
        }
        // A device heard just now cannot be offline: clear an alarm raised while this node's
        // writes were late (or whose clearing at authentication failed).
        let heard: Vec<String> = silences
            .iter()
            .filter(|(_, silent)| *silent < interval * 2)
            .map(|(device_id, _)| device_id.clone())
            .collect();
        match store.open_offline_alarms(&heard).await {
            Ok(open) if !open.is_empty() => {
                if let Err(error) = store.devices_back(&open).await {
                    tracing::warn!(%error, n_devices = open.len(), "could not clear offline alarms");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not look for offline alarms"),
        }
    }
}
