//! The node-local hub: which operators' consoles and which devices this node holds, and the
//! delivery of database notifications to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use carebell_store::{Notification, Release};
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
    /// Whether the database records this session as holding the link (`ARRIVING`, `HELD`,
    /// `UNHELD`).
    hold: Arc<AtomicU8>,
}

/// The session's arrival is being recorded; supervision leaves the link alone until it is.
const ARRIVING: u8 = 0;
/// The database records this session as holding the link.
const HELD: u8 = 1;
/// It does not (the device fell silent, the arrival failed, or the node's lease lapsed): the
/// link is taken again once the device is heard.
const UNHELD: u8 = 2;

/// A session that ended: its link is released by the next supervision pass.
struct Departure {
    device_id: String,
    session: u64,
    heard_ms: u64,
}

/// What a supervision pass writes about this node's links.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HoldWork {
    /// Links ended or fallen silent, with when each device was last heard.
    pub releases: Vec<Release>,
    /// Links to take again, as (device, session): their devices are heard again.
    pub holds: Vec<(String, i64)>,
}

fn session_number(session: u64) -> i64 {
    i64::try_from(session).unwrap_or(i64::MAX)
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
    /// This node (process) as the database knows it: the holder of its devices' links.
    node: Uuid,
    /// Sessions ended since the last supervision pass.
    departures: Mutex<Vec<Departure>>,
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
    hold: Arc<AtomicU8>,
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

    /// This session's number on this node (the database records which session holds a link).
    pub fn session(&self) -> i64 {
        session_number(self.session)
    }

    /// The session's arrival was recorded (`held`), or could not be (supervision then takes
    /// the link when it can).
    pub fn arrived(&self, held: bool) {
        self.hold
            .store(if held { HELD } else { UNHELD }, Ordering::Relaxed);
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
        // Released by the next pass, as last heard (not now: a silently dropped link must not
        // look alive); the release applies only if this session still holds the link.
        lock(&self.hub.departures).push(Departure {
            device_id: self.device_id.clone(),
            session: self.session,
            heard_ms: self.last_heard_ms.load(Ordering::Relaxed),
        });
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
            node: Uuid::new_v4(),
            departures: Mutex::default(),
        })
    }

    /// This node (process): a new identity at every start.
    pub fn node(&self) -> Uuid {
        self.node
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// What a supervision pass must write: every ended session's release, the release of every
    /// held link whose device has been silent for `release_after` (marked released), and every
    /// released link whose device was heard since. A device that keeps talking costs nothing.
    pub fn hold_work(&self, release_after: Duration) -> HoldWork {
        let now = self.elapsed_ms();
        let limit = u64::try_from(release_after.as_millis()).unwrap_or(u64::MAX);
        let silence = |heard_ms: u64| Duration::from_millis(now.saturating_sub(heard_ms));
        let mut work = HoldWork::default();
        for departure in lock(&self.departures).drain(..) {
            work.releases.push(Release {
                device_id: departure.device_id,
                session: session_number(departure.session),
                silent_for: silence(departure.heard_ms),
            });
        }
        for (device_id, slot) in lock(&self.devices).iter() {
            let heard = slot.last_heard_ms.load(Ordering::Relaxed);
            let silent = now.saturating_sub(heard) >= limit;
            match slot.hold.load(Ordering::Relaxed) {
                HELD if silent => {
                    slot.hold.store(UNHELD, Ordering::Relaxed);
                    work.releases.push(Release {
                        device_id: device_id.clone(),
                        session: session_number(slot.session),
                        silent_for: silence(heard),
                    });
                }
                UNHELD if !silent => {
                    work.holds
                        .push((device_id.clone(), session_number(slot.session)));
                }
                _ => {}
            }
        }
        work
    }

    /// The releases of a pass could not be written: they are tried again at the next.
    pub fn releases_failed(&self, releases: Vec<Release>) {
        let now = self.elapsed_ms();
        let devices = lock(&self.devices);
        let mut departures = lock(&self.departures);
        for release in releases {
            match devices.get(&release.device_id) {
                Some(slot) if session_number(slot.session) == release.session => {
                    slot.hold.store(HELD, Ordering::Relaxed);
                }
                _ => departures.push(Departure {
                    device_id: release.device_id,
                    session: u64::try_from(release.session).unwrap_or_default(),
                    heard_ms: now
                        .saturating_sub(u64::try_from(release.silent_for.as_millis()).unwrap_or(0)),
                }),
            }
        }
    }

    /// The database now records these (device, session) links as held by this node.
    pub fn held(&self, taken: &[(String, i64)]) {
        let devices = lock(&self.devices);
        for (device_id, session) in taken {
            if let Some(slot) = devices.get(device_id) {
                if session_number(slot.session) == *session {
                    let _ = slot.hold.compare_exchange(
                        UNHELD,
                        HELD,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        }
    }

    /// The node's lease had lapsed and the database released its links: each is taken again by
    /// the next pass (if its device is still heard).
    pub fn unhold_all(&self) {
        for slot in lock(&self.devices).values() {
            let _ = slot
                .hold
                .compare_exchange(HELD, UNHELD, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Whether `session` still holds `device_id`'s link here and heard it within `within`.
    pub fn heard_within(&self, device_id: &str, session: i64, within: Duration) -> bool {
        let now = self.elapsed_ms();
        lock(&self.devices).get(device_id).is_some_and(|slot| {
            session_number(slot.session) == session
                && slot.hold.load(Ordering::Relaxed) == HELD
                && Duration::from_millis(
                    now.saturating_sub(slot.last_heard_ms.load(Ordering::Relaxed)),
                ) < within
        })
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
    pub fn register_device(self: &Arc<Self>, device_id: &str) -> DeviceRegistration {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let outbox_changed = Arc::new(Notify::new());
        let kicked = CancellationToken::new();
        let last_heard_ms = Arc::new(AtomicU64::new(self.elapsed_ms()));
        let signals = Arc::new(SignalQueue::default());
        let hold = Arc::new(AtomicU8::new(ARRIVING));
        let previous = lock(&self.devices).insert(
            device_id.to_owned(),
            DeviceSlot {
                session,
                outbox_changed: Arc::clone(&outbox_changed),
                signals: Arc::clone(&signals),
                kicked: kicked.clone(),
                last_heard_ms: Arc::clone(&last_heard_ms),
                hold: Arc::clone(&hold),
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
            hold,
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
    fn supervision_writes_only_what_changed_about_the_links() {
        let hub = Hub::new();
        let long = Duration::from_secs(3600);
        let arriving = hub.register_device("tab-1");
        // Nothing while the arrival is being recorded.
        assert_eq!(hub.hold_work(Duration::ZERO), HoldWork::default());
        arriving.arrived(true);
        // Held and heard: nothing to write, however many passes.
        for _ in 0..3 {
            assert_eq!(hub.hold_work(long), HoldWork::default());
        }
        // Silent past the limit: released once, as last heard.
        let work = hub.hold_work(Duration::ZERO);
        assert_eq!(work.holds, []);
        assert_eq!(work.releases.len(), 1);
        assert_eq!(work.releases[0].device_id, "tab-1");
        assert_eq!(work.releases[0].session, arriving.session());
        assert_eq!(hub.hold_work(Duration::ZERO), HoldWork::default());
        // Heard again: taken again until the database says it is held.
        arriving.heard();
        let again = hub.hold_work(long);
        assert_eq!(again.holds, [("tab-1".to_owned(), arriving.session())]);
        assert_eq!(hub.hold_work(long).holds, again.holds, "retried until held");
        hub.held(&again.holds);
        assert_eq!(hub.hold_work(long), HoldWork::default());
        // A failed release is tried again.
        let links = |work: &HoldWork| -> Vec<(String, i64)> {
            work.releases
                .iter()
                .map(|release| (release.device_id.clone(), release.session))
                .collect()
        };
        let work = hub.hold_work(Duration::ZERO);
        assert_eq!(links(&work).len(), 1);
        hub.releases_failed(work.releases.clone());
        assert_eq!(links(&hub.hold_work(Duration::ZERO)), links(&work));
        // A lapsed lease: every held link is taken again.
        arriving.heard();
        hub.held(&hub.hold_work(long).holds);
        assert_eq!(hub.hold_work(long), HoldWork::default());
        hub.unhold_all();
        assert_eq!(hub.hold_work(long).holds.len(), 1);
        // A failed arrival is taken by supervision.
        let failed = hub.register_device("tab-2");
        failed.arrived(false);
        let holds = hub.hold_work(long).holds;
        assert!(
            holds.contains(&("tab-2".to_owned(), failed.session())),
            "{holds:?}"
        );
        // An ended session is released once, by its own session number, even when a newer
        // one has replaced it.
        let newer = hub.register_device("tab-2");
        newer.arrived(true);
        let old_session = failed.session();
        drop(failed);
        let work = hub.hold_work(long);
        assert_eq!(work.releases.len(), 1);
        assert_eq!(work.releases[0].session, old_session);
        assert!(hub.heard_within("tab-2", newer.session(), long));
        assert!(!hub.heard_within("tab-2", old_session, long));
        assert!(hub.hold_work(long).releases.is_empty());
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
