//! The access log: events of reads of lab data, written in batches off the request path.
//! A request hands its event to a channel; a background task writes what has gathered every
//! 200 ms (or 500 events) in one transaction, and drains the channel on shutdown.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::audit::{self, Event};
use crate::store::Store;

const CAPACITY: usize = 10_000;
const BATCH: usize = 500;
const PERIOD: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct AccessLog {
    sender: mpsc::Sender<Event>,
}

impl AccessLog {
    pub fn new() -> (Self, mpsc::Receiver<Event>) {
        let (sender, receiver) = mpsc::channel(CAPACITY);
        (AccessLog { sender }, receiver)
    }

    /// Queues an event; waits only if the writer is 10,000 events behind (backpressure, never loss).
    pub async fn record(&self, event: Event) {
        if self.sender.send(event).await.is_err() {
            tracing::error!("the access log writer has stopped; an access event was not recorded");
        }
    }
}

/// Writes batches until `shutdown`, then drains what is left.
pub async fn run(
    store: Store,
    mut receiver: mpsc::Receiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut backlog = false;
    loop {
        // Under load a full batch is followed at once by the next; idle, wait a period.
        let stopping = if backlog {
            *shutdown.borrow()
        } else {
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => false,
                _ = shutdown.changed() => true,
            }
        };
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        if stopping {
            receiver.close();
            while let Some(event) = receiver.recv().await {
                batch.push(event);
            }
        }
        backlog = batch.len() >= BATCH;
        if !batch.is_empty() {
            write(&store, &mut batch).await;
        }
        // Only after draining: a shutdown that came during the write is seen by the next
        // turn (its `changed()` is ready at once), which drains what arrived meanwhile.
        if stopping {
            break;
        }
    }
}

async fn write(store: &Store, batch: &mut Vec<Event>) {
    for attempt in 1..=5 {
        let result: Result<(), crate::error::AppError> = async {
            let mut transaction = store.begin().await?;
            audit::record_batch(&mut transaction, store.chain_key(), batch.clone()).await?;
            transaction.commit().await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(error) => {
                tracing::warn!(attempt, error = %error, "writing access events failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
    tracing::error!(
        events = batch.len(),
        "access events could not be written; kept for the next batch"
    );
}
