//! The node-local hub: which operators' consoles and which devices this node holds, and the
//! delivery of database notifications to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use carebell_store::Notification;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What an operator's console must hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorEvent {
    Offer {
        offer_id: Uuid,
    },
    OfferWithdrawn {
        offer_id: Uuid,
        call_id: Uuid,
        reason: String,
    },
    CallChanged {
        call_id: Uuid,
        state: String,
        disposition: Option<String>,
    },
    /// The system changed the operator's status (paused after missed offers, wrap-up over).
    StatusChanged {
        status: String,
        reason: String,
    },
    /// An item waited too long (sent to every console; supervisors' consoles show it, and
    /// every console when `everyone`).
    Alert {
        call_id: Option<Uuid>,
        /// A service order past its SLA (escalated to its station).
        order_id: Option<Uuid>,
        reason: String,
        everyone: bool,
    },
    /// WebRTC signalling from the tablet of a call this operator holds.
    RtcSignal {
        call_id: Uuid,
        kind: String,
        payload: String,
    },
    /// Notifications may have been missed: re-read the live offer.
    Resync,
}

/// WebRTC signalling for a device session to pass to its tablet (not stored, not resent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSignal {
    pub call_id: Uuid,
    pub kind: String,
    pub payload: String,
}

/// Signals waiting for one device session; a session that falls this far behind drops the
/// oldest (the console starts the voice again).
const DEVICE_SIGNAL_CAPACITY: usize = 64;

/// The WebRTC signals waiting for one device session. Allocates nothing until a signal arrives:
/// almost no tablet is in a voice call at any moment, and a channel per connection would cost
/// kilobytes on each of a hundred thousand idle links.
#[derive(Default)]
pub struct SignalQueue {
    queue: Mutex<std::collections::VecDeque<DeviceSignal>>,
    arrived: Notify,
}

impl SignalQueue {
    fn push(&self, signal: DeviceSignal) {
        let mut queue = lock(&self.queue);
        if queue.len() >= DEVICE_SIGNAL_CAPACITY {
            queue.pop_front();
        }
        queue.push_back(signal);
        drop(queue);
        self.arrived.notify_one();
    }

    /// Waits for signals and takes every one waiting, oldest first.
    pub async fn next_batch(&self) -> Vec<DeviceSignal> {
        loop {
            let batch: Vec<DeviceSignal> = lock(&self.queue).drain(..).collect();
            if !batch.is_empty() {
                return batch;
            }
            self.arrived.notified().await;
        }
    }
}

struct DeviceSlot {
    session: u64,
    outbox_changed: Arc<Notify>,
    signals: Arc<SignalQueue>,
    kicked: CancellationToken,
    /// When the device was last heard, in milliseconds since the hub's epoch.
    last_heard_ms: Arc<AtomicU64>,
    /// When its last-seen time was last written to the database (hub epoch ms; 0: never).
    written_ms: AtomicU64,
}

/// Capacity of each operator's event channel. An operator receives a handful of events per
/// call; a console that falls 64 behind is broken, and is told to resync rather than allowed
/// to grow memory without bound.
const OPERATOR_CHANNEL_CAPACITY: usize = 64;

pub struct Hub {
    // std mutexes: held for map operations only, never across an await.
    operators: Mutex<HashMap<Uuid, broadcast::Sender<OperatorEvent>>>,
    devices: Mutex<HashMap<String, DeviceSlot>>,
    next_session: AtomicU64,
    dispatch_wanted: Notify,
    /// Providers whose offers or orders changed, for the provider API's feeds.
    provider_feeds: broadcast::Sender<Uuid>,
    /// The origin of the devices' last-heard times (a monotonic clock: only differences are
    /// sent to the database, which applies them to its own clock).
    epoch: Instant,
    /// Devices revoked in the last [`REVOKED_MEMORY`]: a handshake that read the key just before
    /// the revocation committed is cut off when it registers.
    recently_revoked: Mutex<HashMap<String, Instant>>,
}

/// How long a revocation is remembered on each node (far longer than a handshake).
const REVOKED_MEMORY: std::time::Duration = std::time::Duration::from_secs(120);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent across a panic in another holder (each operation is a single
    // insert or remove), so a poisoned lock is still safe to use.
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// An operator console's subscription; dropping it unsubscribes.
pub struct OperatorSubscription {
    hub: Arc<Hub>,
    operator_id: Uuid,
    pub events: broadcast::Receiver<OperatorEvent>,
}

impl Drop for OperatorSubscription {
    fn drop(&mut self) {
        let mut operators = lock(&self.hub.operators);
        // Our receiver is still alive during drop, so "only us" is a count of one.
        if operators
            .get(&self.operator_id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            operators.remove(&self.operator_id);
        }
    }
}

impl OperatorSubscription {
    /// Whether another console of the same operator is still subscribed on this node.
    pub fn others_remain(&self) -> bool {
        lock(&self.hub.operators)
            .get(&self.operator_id)
            .is_some_and(|sender| sender.receiver_count() > 1)
    }
}

/// A device session's registration; dropping it unregisters (if still the newest session).
pub struct DeviceRegistration {
    hub: Arc<Hub>,
    device_id: String,
    session: u64,
    /// Woken when the device's outbox has new messages.
    pub outbox_changed: Arc<Notify>,
    /// Cancelled when a newer session of the same device registers on this node.
    pub kicked: CancellationToken,
    last_heard_ms: Arc<AtomicU64>,
    /// WebRTC signalling for the tablet.
    pub signals: Arc<SignalQueue>,
}

impl DeviceRegistration {
    /// Whether this device has been revoked (then `kicked` is cancelled too).
    pub fn revoked(&self) -> bool {
        self.hub.was_revoked(&self.device_id)
    }

    /// The device was heard from just now.
    pub fn heard(&self) {
        self.last_heard_ms
            .store(self.hub.elapsed_ms(), Ordering::Relaxed);
    }

    /// The arrival did not write the device's last-seen time: the refresher writes it at its
    /// next pass (and clears an offline alarm left open).
    pub fn last_seen_unwritten(&self) {
        self.hub
            .device_silences_due_again(std::slice::from_ref(&self.device_id));
    }

    /// How long the device has been silent.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.hub
                .elapsed_ms()
                .saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)),
        )
    }
}

impl Drop for DeviceRegistration {
    fn drop(&mut self) {
        let mut devices = lock(&self.hub.devices);
        if devices
            .get(&self.device_id)
            .is_some_and(|slot| slot.session == self.session)
        {
            devices.remove(&self.device_id);
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            operators: Mutex::default(),
            devices: Mutex::default(),
            next_session: AtomicU64::new(0),
            dispatch_wanted: Notify::new(),
            provider_feeds: broadcast::channel(256).0,
            epoch: Instant::now(),
            recently_revoked: Mutex::default(),
        })
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The devices whose durable last-seen time was not written for `every` (or never), with
    /// how long each has been silent; marks them written. Spreads the writes of a large fleet
    /// over `every` instead of rewriting every device at each pass.
    pub fn device_silences_due(&self, every: Duration) -> Vec<(String, Duration)> {
        let now = self.elapsed_ms();
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        lock(&self.devices)
            .iter()
            .filter_map(|(device_id, slot)| {
                let written = slot.written_ms.load(Ordering::Relaxed);
                if written != 0 && now.saturating_sub(written) < every_ms {
                    return None;
                }
                slot.written_ms.store(now.max(1), Ordering::Relaxed);
                let heard = slot.last_heard_ms.load(Ordering::Relaxed);
                Some((
                    device_id.clone(),
                    Duration::from_millis(now.saturating_sub(heard)),
                ))
            })
            .collect()
    }

    /// Makes these devices' last-seen times due again at once (their write was skipped or
    /// failed), for the next [`Hub::device_silences_due`].
    pub fn device_silences_due_again(&self, device_ids: &[String]) {
        let devices = lock(&self.devices);
        for device_id in device_ids {
            if let Some(slot) = devices.get(device_id) {
                slot.written_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    pub fn subscribe_operator(self: &Arc<Self>, operator_id: Uuid) -> OperatorSubscription {
        let mut operators = lock(&self.operators);
        let events = operators
            .entry(operator_id)
            .or_insert_with(|| broadcast::channel(OPERATOR_CHANNEL_CAPACITY).0)
            .subscribe();
        OperatorSubscription {
            hub: Arc::clone(self),
            operator_id,
            events,
        }
    }

    /// Registers a device session, kicking an older session of the same device on this node.
    ///
    /// The session's arrival (`Store::devices_arrived`) writes the device's last-seen time, so
    /// the slot counts as written now: the refresher's first write of it falls due a period
    /// later, not at its next pass. After a node's restart that pass found every returning
    /// tablet new and rewrote each row its arrival had just written, 100,000 redundant updates
    /// competing with the arrivals themselves. If the arrival's write fails,
    /// [`DeviceRegistration::last_seen_unwritten`] makes it due at once.
    pub fn register_device(self: &Arc<Self>, device_id: &str) -> DeviceRegistration {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let outbox_changed = Arc::new(Notify::new());
        let kicked = CancellationToken::new();
        let last_heard_ms = Arc::new(AtomicU64::new(self.elapsed_ms()));
        let signals = Arc::new(SignalQueue::default());
        let previous = lock(&self.devices).insert(
            device_id.to_owned(),
            DeviceSlot {
                session,
                outbox_changed: Arc::clone(&outbox_changed),
                signals: Arc::clone(&signals),
                written_ms: AtomicU64::new(self.elapsed_ms().max(1)),
                kicked: kicked.clone(),
                last_heard_ms: Arc::clone(&last_heard_ms),
            },
        );
        if let Some(previous) = previous {
            previous.kicked.cancel();
        }
        if self.was_revoked(device_id) {
            kicked.cancel();
        }
        DeviceRegistration {
            hub: Arc::clone(self),
            device_id: device_id.to_owned(),
            session,
            outbox_changed,
            kicked,
            last_heard_ms,
            signals,
        }
    }

    /// Whether `device_id` was revoked recently (its sessions end at once).
    pub fn was_revoked(&self, device_id: &str) -> bool {
        lock(&self.recently_revoked).contains_key(device_id)
    }

    /// A device was revoked: its session on this node (if any) ends now, and for a while a new
    /// registration of it is cut off too.
    fn revoke(&self, device_id: String) {
        {
            let mut revoked = lock(&self.recently_revoked);
            revoked.retain(|_, at| at.elapsed() < REVOKED_MEMORY);
            revoked.insert(device_id.clone(), Instant::now());
        }
        if let Some(slot) = lock(&self.devices).get(&device_id) {
            slot.kicked.cancel();
        }
    }

    pub fn n_devices(&self) -> usize {
        lock(&self.devices).len()
    }

    /// Resolves when a dispatch round is wanted (new work, a free operator).
    pub async fn dispatch_wanted(&self) {
        self.dispatch_wanted.notified().await;
    }

    pub fn want_dispatch(&self) {
        self.dispatch_wanted.notify_one();
    }

    fn send_to_operator(&self, operator_id: Uuid, event: OperatorEvent) {
        if let Some(sender) = lock(&self.operators).get(&operator_id) {
            // No receivers is fine: the console is gone and will resync when it returns.
            let _ = sender.send(event);
        }
    }

    /// Hands one database notification to whoever on this node must hear it.
    pub fn deliver(&self, notification: Notification) {
        match notification {
            Notification::Dispatch => self.want_dispatch(),
            Notification::Offer {
                offer_id,
                operator_id,
            } => self.send_to_operator(operator_id, OperatorEvent::Offer { offer_id }),
            Notification::OfferWithdrawn {
                offer_id,
                operator_id,
                call_id,
                reason,
            } => self.send_to_operator(
                operator_id,
                OperatorEvent::OfferWithdrawn {
                    offer_id,
                    call_id,
                    reason,
                },
            ),
            Notification::CallChanged {
                call_id,
                operator_id,
                state,
                disposition,
            } => {
                if let Some(operator_id) = operator_id {
                    self.send_to_operator(
                        operator_id,
                        OperatorEvent::CallChanged {
                            call_id,
                            state,
                            disposition,
                        },
                    );
                }
            }
            Notification::OperatorStatus {
                operator_id,
                status,
                reason,
            } => {
                self.send_to_operator(operator_id, OperatorEvent::StatusChanged { status, reason })
            }
            Notification::SupervisorAlert { call_id, reason } => {
                self.alert_all(Some(call_id), None, &reason, false)
            }
            Notification::EmergencyUnanswered { call_id, reason } => {
                self.alert_all(Some(call_id), None, &reason, true)
            }
            Notification::OrderEscalated {
                order_id, reason, ..
            } => self.alert_all(None, Some(order_id), &reason, false),
            Notification::RtcToDevice {
                device_id,
                call_id,
                kind,
                payload,
            } => {
                if let Some(slot) = lock(&self.devices).get(&device_id) {
                    slot.signals.push(DeviceSignal {
                        call_id,
                        kind,
                        payload,
                    });
                }
            }
            Notification::RtcToOperator {
                operator_id,
                call_id,
                kind,
                payload,
            } => self.send_to_operator(
                operator_id,
                OperatorEvent::RtcSignal {
                    call_id,
                    kind,
                    payload,
                },
            ),
            Notification::ProviderFeed { provider_id } => {
                // No subscribers is fine: no provider feed is open on this node.
                let _ = self.provider_feeds.send(provider_id);
            }
            Notification::DeviceRevoked { device_id } => self.revoke(device_id),
            Notification::DeviceOutbox { device_id } => {
                if let Some(slot) = lock(&self.devices).get(&device_id) {
                    slot.outbox_changed.notify_one();
                }
            }
        }
    }

    /// Wakes when any provider's feed changed (the id says whose); a lagging receiver should
    /// re-read.
    pub fn provider_feeds(&self) -> broadcast::Receiver<Uuid> {
        self.provider_feeds.subscribe()
    }

    fn alert_all(
        &self,
        call_id: Option<Uuid>,
        order_id: Option<Uuid>,
        reason: &str,
        everyone: bool,
    ) {
        for sender in lock(&self.operators).values() {
            let _ = sender.send(OperatorEvent::Alert {
                call_id,
                order_id,
                reason: reason.to_owned(),
                everyone,
            });
        }
    }

    /// Notifications may have been lost: everyone re-reads.
    pub fn resync(&self) {
        self.want_dispatch();
        for slot in lock(&self.devices).values() {
            slot.outbox_changed.notify_one();
        }
        for sender in lock(&self.operators).values() {
            let _ = sender.send(OperatorEvent::Resync);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_wait_in_order_and_the_oldest_go_when_a_session_falls_behind() {
        let queue = SignalQueue::default();
        for n in 0..(DEVICE_SIGNAL_CAPACITY + 3) {
            queue.push(DeviceSignal {
                call_id: Uuid::nil(),
                kind: "candidate".to_owned(),
                payload: n.to_string(),
            });
        }
        let batch = queue.next_batch().await;
        assert_eq!(batch.len(), DEVICE_SIGNAL_CAPACITY);
        assert_eq!(batch[0].payload, "3", "the three oldest were dropped");
        // Nothing waiting: the next batch waits for the next signal.
        let waiting = tokio::time::timeout(Duration::from_millis(50), queue.next_batch()).await;
        assert!(waiting.is_err());
    }

    #[test]
    fn a_new_session_of_the_same_device_kicks_the_old_one() {
        let hub = Hub::new();
        let first = hub.register_device("tab-1");
        let second = hub.register_device("tab-1");
        assert!(first.kicked.is_cancelled());
        assert!(!second.kicked.is_cancelled());
        drop(first);
        assert_eq!(
            hub.n_devices(),
            1,
            "the old session must not unregister the new one"
        );
        drop(second);
        assert_eq!(hub.n_devices(), 0);
    }

    #[test]
    fn last_seen_writes_fall_due_once_per_period_and_again_at_once_when_skipped() {
        let hub = Hub::new();
        let one = hub.register_device("tab-1");
        let two = hub.register_device("tab-2");
        let ids = |due: Vec<(String, Duration)>| {
            let mut ids: Vec<String> = due.into_iter().map(|(id, _)| id).collect();
            ids.sort();
            ids
        };
        let every = Duration::from_secs(3600);
        assert!(
            hub.device_silences_due(every).is_empty(),
            "a new session's arrival writes its last-seen time"
        );
        assert_eq!(
            ids(hub.device_silences_due(Duration::ZERO)),
            ["tab-1", "tab-2"],
            "due once the period has passed"
        );
        // Neither arrival's write went through: both are due at the next pass.
        one.last_seen_unwritten();
        two.last_seen_unwritten();
        assert_eq!(ids(hub.device_silences_due(every)), ["tab-1", "tab-2"]);
        assert!(
            hub.device_silences_due(every).is_empty(),
            "written just now"
        );
        // The write of tab-2 was skipped (its row was busy): it is due at the next pass, alone.
        hub.device_silences_due_again(&["tab-2".to_owned(), "tab-gone".to_owned()]);
        assert_eq!(ids(hub.device_silences_due(every)), ["tab-2"]);
        assert!(hub.device_silences_due(every).is_empty());
    }

    #[tokio::test]
    async fn offers_reach_only_their_operator() {
        let hub = Hub::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut sub_a = hub.subscribe_operator(a);
        let mut sub_b = hub.subscribe_operator(b);
        let offer_id = Uuid::new_v4();
        hub.deliver(Notification::Offer {
            offer_id,
            operator_id: a,
        });
        assert_eq!(
            sub_a.events.recv().await.unwrap(),
            OperatorEvent::Offer { offer_id }
        );
        assert!(sub_b.events.try_recv().is_err());
    }

    #[test]
    fn an_operator_with_two_consoles_stays_subscribed_until_both_drop() {
        let hub = Hub::new();
        let op = Uuid::new_v4();
        let first = hub.subscribe_operator(op);
        let second = hub.subscribe_operator(op);
        assert!(first.others_remain());
        drop(first);
        assert!(!second.others_remain());
        assert!(lock(&hub.operators).contains_key(&op));
        drop(second);
        assert!(!lock(&hub.operators).contains_key(&op));
    }
}
