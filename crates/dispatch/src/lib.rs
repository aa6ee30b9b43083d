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

/// Keeps the database's record of the links this node holds (see `carebell_store`'s
/// `holds.rs`): every `interval` it renews the node's lease, releases the links of ended
/// sessions and of devices silent for `release_after` (each as last heard), and takes again the
/// links of released devices heard since. A device that keeps talking costs the database
/// nothing. `release_after` must stay well under the offline threshold, and `interval` too: a
/// lease not renewed for the offline threshold is folded by the offline sweep. Cancel
/// `shutdown` once the node's sessions have ended: a last pass then releases their links.
pub async fn run_device_holds(
    store: carebell_store::Store,
    hub: std::sync::Arc<Hub>,
    interval: std::time::Duration,
    release_after: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let node = hub.node();
    let mut folds = None;
    let mut stopping = false;
    loop {
        match store.renew_node(node).await {
            Ok(now) => {
                // Folded while the lease had lapsed: the database released every link here.
                if folds.is_some_and(|before| now > before) {
                    tracing::warn!(%node, "this node's lease had lapsed; taking its links again");
                    hub.unhold_all();
                }
                folds = Some(now);
            }
            Err(error) => tracing::warn!(%error, %node, "could not renew this node's lease"),
        }
        let work = hub.hold_work(release_after);
        if let Err(error) = store.release_devices(node, &work.releases).await {
            tracing::warn!(%error, n_links = work.releases.len(), "could not release links; retrying");
            hub.releases_failed(work.releases);
        }
        match store.hold_devices(node, &work.holds).await {
            Ok(taken) => {
                let taken: std::collections::HashSet<String> = taken.into_iter().collect();
                let held: Vec<(String, i64)> = work
                    .holds
                    .into_iter()
                    .filter(|(device_id, _)| taken.contains(device_id))
                    .collect();
                hub.held(&held);
            }
            Err(error) => tracing::warn!(%error, "could not take links again; retrying"),
        }
        // A device heard here cannot be offline: clear an alarm raised while this node's lease
        // had lapsed (or whose clearing at the arrival failed).
        match store.held_offline_alarms(node).await {
            Ok(open) => {
                for (device_id, session) in open {
                    if !hub.heard_within(&device_id, session, release_after) {
                        continue;
                    }
                    if let Err(error) = store.device_back(&device_id).await {
                        tracing::warn!(%error, %device_id, "could not clear an offline alarm");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "could not look for offline alarms"),
        }
        if stopping {
            return;
        }
        // Stopping: one last pass, for the sessions that ended while the node drained.
        tokio::select! {
            _ = shutdown.cancelled() => stopping = true,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
