//! Group commit for the alarms of every device session in this process.
//!
//! A session hands its alarm to the batcher and waits for the answer; the batcher stores
//! whatever has queued up in one transaction (`Store::record_alarms`), with a bounded number of
//! transactions in flight. There is no timer: an alarm that arrives when a slot is free is stored
//! at once, alone, and alarms only wait for each other while the database is busy with earlier
//! ones, which is when storing them together pays. The device is acknowledged only after its
//! alarm's transaction committed, as before.

use std::sync::Arc;

use carebell_store::{AlarmOutcome, NewAlarm, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Semaphore};

type Reply = oneshot::Sender<Result<AlarmOutcome, StoreError>>;

/// A handle to the process's alarm batcher; cheap to clone.
#[derive(Clone)]
pub struct AlarmBatcher {
    queue: mpsc::UnboundedSender<(NewAlarm, Reply)>,
}

impl AlarmBatcher {
    /// Starts the batcher: at most `max_batch` alarms per transaction and `in_flight`
    /// transactions at once. It stops when every handle has been dropped.
    pub fn spawn(store: Store, max_batch: usize, in_flight: usize) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(store, receiver, max_batch.max(1), in_flight.max(1)));
        Self { queue }
    }

    /// Stores one alarm, as `Store::record_alarm` does, once its batch has committed.
    pub async fn record(&self, alarm: NewAlarm) -> Result<AlarmOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send((alarm, reply)).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

async fn run(
    store: Store,
    mut receiver: mpsc::UnboundedReceiver<(NewAlarm, Reply)>,
    max_batch: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = receiver.recv().await {
        // Waiting for a free slot is what lets a batch grow while the database is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (alarms, replies): (Vec<NewAlarm>, Vec<Reply>) = batch.into_iter().unzip();
            carebell_metrics::metrics()
                .alarm_batch_size
                .observe(alarms.len() as f64);
            let results = store.record_alarms(&alarms).await;
            drop(slot);
            for (reply, result) in replies.into_iter().zip(results) {
                // A session that has gone no longer waits; its alarm is stored all the same and
                // the tablet's resend is answered from the stored row.
                let _ = reply.send(result);
            }
        });
    }
}
