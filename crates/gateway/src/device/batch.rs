//! Group commit for the database work of every device session in this process: alarms, the
//! two reads-and-writes of every new connection (the key lookup and the arrival), and the
//! outbox traffic of every alarm's call update (the read and the device's acknowledgement).
//!
//! A session hands its request to a batcher and waits for the answer; the batcher does whatever
//! has queued up in one statement or transaction, with a bounded number in flight. There is no
//! timer: a request that arrives when a slot is free goes at once, alone, and requests only wait
//! for each other while the database is busy with earlier ones, which is when doing them
//! together pays. A reconnect storm is then a few hundred statements a second however many
//! tablets arrive, instead of a queue for the pool that times out and drops tablets. A device is
//! still acknowledged only after its alarm's transaction committed.

use std::future::Future;
use std::sync::Arc;

use carebell_store::{
    AlarmOutcome, Arrival, NewAlarm, OutboxAck, OutboxItem, OutboxRead, Store, StoreError,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

type Job<Q, A> = (Q, oneshot::Sender<A>);

/// A queue in front of a batch operation: `work` gets the queued requests and returns one
/// answer per request, in order.
pub struct Batcher<Q, A> {
    queue: mpsc::UnboundedSender<Job<Q, A>>,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// At most `max_batch` requests per call of `work`, and `in_flight` calls at once. The
    /// batcher stops when every handle has been dropped.
    pub fn spawn<F, Fut>(max_batch: usize, in_flight: usize, work: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<A>> + Send + 'static,
    {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(receiver, max_batch.max(1), in_flight.max(1), work));
        Self { queue }
    }

    /// The answer to one request, once its batch is done; `None` if the batcher has stopped.
    pub async fn call(&self, request: Q) -> Option<A> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).ok()?;
        answer.await.ok()
    }
}

async fn run<Q, A, F, Fut>(
    mut receiver: mpsc::UnboundedReceiver<Job<Q, A>>,
    max_batch: usize,
    in_flight: usize,
    work: F,
) where
    Q: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<Q>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<A>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = receiver.recv().await {
        // Waiting for a free slot is what lets a batch grow while the database is busy.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<Q>, Vec<oneshot::Sender<A>>) = batch.into_iter().unzip();
        let done = work(requests);
        tokio::spawn(async move {
            let answers = done.await;
            drop(slot);
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A session that has gone no longer waits; what was done for it stands (an
                // alarm stays stored, and the tablet's resend is answered from the stored row).
                let _ = reply.send(answer);
            }
        });
    }
}

impl<Q: Send + 'static, T: Send + 'static> Batcher<Q, Result<T, StoreError>> {
    /// [`Batcher::call`] for database work: a stopped batcher answers as a closed pool does.
    pub async fn request(&self, request: Q) -> Result<T, StoreError> {
        self.call(request)
            .await
            .unwrap_or_else(|| Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }
}

/// The process's alarm batcher (`Store::record_alarms`).
#[derive(Clone)]
pub struct AlarmBatcher(Batcher<NewAlarm, Result<AlarmOutcome, StoreError>>);

impl AlarmBatcher {
    pub fn spawn(store: Store, max_batch: usize, in_flight: usize) -> Self {
        Self(Batcher::spawn(
            max_batch,
            in_flight,
            move |alarms: Vec<NewAlarm>| {
                let store = store.clone();
                async move {
                    let metrics = carebell_metrics::metrics();
                    metrics.alarm_batch_size.observe(alarms.len() as f64);
                    let started = std::time::Instant::now();
                    let answers = store.record_alarms(&alarms).await;
                    metrics
                        .alarm_batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    answers
                }
            },
        ))
    }

    /// Stores one alarm, as `Store::record_alarm` does, once its batch has committed.
    pub async fn record(&self, alarm: NewAlarm) -> Result<AlarmOutcome, StoreError> {
        let started = std::time::Instant::now();
        let answer = self.0.request(alarm).await;
        carebell_metrics::metrics()
            .alarm_store_seconds
            .observe(started.elapsed().as_secs_f64());
        answer
    }
}

/// A device's public key and the client certificate it is bound to, if any.
pub type DeviceKey = ([u8; 32], Option<[u8; 32]>);

/// The process's batchers for device sessions: new connections' key lookups and arrivals, the
/// clearing of returning devices' offline alarms, outbox reads and acknowledgements, and the
/// last-seen times of sessions that ended, each one
/// statement (or one short transaction) for many devices. A batch that fails
/// as a whole is done one device at a time, so one bad moment never answers a whole batch with
/// an error the one-by-one path would not give.
#[derive(Clone)]
pub struct SessionBatchers {
    keys: Batcher<String, Result<Option<DeviceKey>, StoreError>>,
    arrivals: Batcher<String, Result<Arrival, StoreError>>,
    reads: Batcher<OutboxRead, Result<Vec<OutboxItem>, StoreError>>,
    acks: Batcher<OutboxAck, Result<u64, StoreError>>,
    backs: Batcher<String, Result<bool, StoreError>>,
    departures: Batcher<(String, std::time::Duration), Result<(), StoreError>>,
}

impl SessionBatchers {
    pub fn spawn(store: Store, max_batch: usize, in_flight: usize) -> Self {
        let keys_store = store.clone();
        let keys = Batcher::spawn(max_batch, in_flight, move |ids: Vec<String>| {
            let store = keys_store.clone();
            async move {
                match store.devices_credentials(&ids).await {
                    Ok(found) => ids.iter().map(|id| Ok(found.get(id).copied())).collect(),
                    Err(error) => {
                        tracing::warn!(%error, "a key lookup batch failed; looking up one by one");
                        one_by_one(&ids, |id| store.device_credentials(id)).await
                    }
                }
            }
        });
        let arrivals_store = store.clone();
        let arrivals = Batcher::spawn(max_batch, in_flight, move |ids: Vec<String>| {
            let store = arrivals_store.clone();
            async move {
                match store.devices_arrived(&ids).await {
                    Ok(found) => ids
                        .iter()
                        .map(|id| {
                            found.get(id).copied().ok_or_else(|| StoreError::NotFound {
                                what: "device",
                                id: id.clone(),
                            })
                        })
                        .collect(),
                    Err(error) => {
                        tracing::warn!(%error, "an arrival batch failed; recording one by one");
                        one_by_one(&ids, |id| store.device_arrived(id)).await
                    }
                }
            }
        });
        let reads_store = store.clone();
        let reads = Batcher::spawn(max_batch, in_flight, move |reads: Vec<OutboxRead>| {
            let store = reads_store.clone();
            async move {
                match store.pending_outboxes(&reads).await {
                    Ok(answers) => answers,
                    Err(error) => {
                        tracing::warn!(%error, "an outbox read batch failed; reading one by one");
                        one_by_one(&reads, |read| {
                            store.pending_outbox(&read.device_id, &read.in_flight, read.limit)
                        })
                        .await
                    }
                }
            }
        });
        let backs_store = store.clone();
        let backs = Batcher::spawn(max_batch, in_flight, move |ids: Vec<String>| {
            let store = backs_store.clone();
            async move {
                match store.devices_back(&ids).await {
                    Ok(cleared) => {
                        let cleared: std::collections::HashSet<String> =
                            cleared.into_iter().collect();
                        ids.iter().map(|id| Ok(cleared.contains(id))).collect()
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a batch of returning devices failed; one by one");
                        one_by_one(&ids, |id| store.device_back(id)).await
                    }
                }
            }
        });
        let departures_store = store.clone();
        let departures = Batcher::spawn(
            max_batch,
            in_flight,
            move |departures: Vec<(String, std::time::Duration)>| {
                let store = departures_store.clone();
                async move {
                    match store.devices_seen(&departures).await {
                        Ok(()) => departures.iter().map(|_| Ok(())).collect(),
                        Err(error) => {
                            tracing::warn!(%error, "a batch of last-seen times at session ends failed; one by one");
                            one_by_one(&departures, |(id, silent)| store.device_seen(id, *silent))
                                .await
                        }
                    }
                }
            },
        );
        let acks = Batcher::spawn(max_batch, in_flight, move |acks: Vec<OutboxAck>| {
            let store = store.clone();
            async move {
                match store.ack_outboxes(&acks).await {
                    Ok(counts) => counts.into_iter().map(Ok).collect(),
                    Err(error) => {
                        tracing::warn!(%error, "an outbox acknowledgement batch failed; one by one");
                        one_by_one(&acks, |ack| store.ack_outbox(&ack.device_id, &ack.ids)).await
                    }
                }
            }
        });
        Self {
            keys,
            arrivals,
            reads,
            acks,
            backs,
            departures,
        }
    }

    /// `Store::device_seen` for a session that ended, batched.
    pub async fn departed(
        &self,
        device_id: &str,
        silent_for: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.departures
            .request((device_id.to_owned(), silent_for))
            .await
    }

    /// `Store::device_back`, batched: whether this device's offline alarm was cleared.
    pub async fn back(&self, device_id: &str) -> Result<bool, StoreError> {
        self.backs.request(device_id.to_owned()).await
    }

    /// `Store::device_credentials`, batched.
    pub async fn credentials(&self, device_id: &str) -> Result<Option<DeviceKey>, StoreError> {
        self.keys.request(device_id.to_owned()).await
    }

    /// `Store::device_arrived`, batched.
    pub async fn arrived(&self, device_id: &str) -> Result<Arrival, StoreError> {
        self.arrivals.request(device_id.to_owned()).await
    }

    /// `Store::pending_outbox`, batched.
    pub async fn pending_outbox(
        &self,
        device_id: &str,
        in_flight: Vec<i64>,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let read = OutboxRead {
            device_id: device_id.to_owned(),
            in_flight,
            limit,
        };
        self.reads.request(read).await
    }

    /// `Store::ack_outbox`, batched; nothing to acknowledge costs nothing.
    pub async fn ack_outbox(&self, device_id: &str, ids: Vec<i64>) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ack = OutboxAck {
            device_id: device_id.to_owned(),
            ids,
        };
        self.acks.request(ack).await
    }
}

/// A failed batch's requests done one at a time, in order (one bad request then fails alone).
async fn one_by_one<'a, Q, T, Fut>(
    requests: &'a [Q],
    each: impl Fn(&'a Q) -> Fut,
) -> Vec<Result<T, StoreError>>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        answers.push(each(request).await);
    }
    answers
}
