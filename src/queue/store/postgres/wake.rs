//! Waking idle workers when a task is pushed: one `LISTEN` per store, on a connection of its
//! own (never one of the pool's: a listener per worker held a pooled connection for the
//! worker's life, and eight workers left a pool of eight nothing for pushes, acknowledgements
//! and heartbeats), reconnecting after a lost connection, and one wake-up signal per queue
//! that coalesces bursts (a push of 3 000 tasks notifies 3 000 times; a worker wakes once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;

/// The channel apalis-postgres' insert trigger notifies (payload: `{"job_type": …, "id": …}`).
const CHANNEL: &str = "apalis::job::insert";

/// The wake-up signals of a store's queues, and the task that listens for them.
pub(crate) struct Wakes {
    pool: PgPool,
    queues: Mutex<HashMap<String, watch::Sender<u64>>>,
    listening: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Wakes {
    pub(crate) fn new(pool: PgPool) -> Arc<Wakes> {
        Arc::new(Wakes {
            pool,
            queues: Mutex::new(HashMap::new()),
            listening: Mutex::new(None),
        })
    }

    /// A stream that yields once each time `queue` got a new task since the last item (many
    /// notifications in between: one item). Starts the listening task if it is not running
    /// (must be called within a tokio runtime).
    pub(crate) fn stream(self: &Arc<Self>, queue: &str) -> BoxStream<'static, ()> {
        let rx = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(queue.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        self.listen();
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
        .boxed()
    }

    fn listen(self: &Arc<Self>) {
        let mut listening = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        if listening.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        *listening = Some(tokio::spawn(listen(Arc::downgrade(self))));
    }

    fn wake(&self, queue: &str) {
        if let Some(tx) = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
        {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        if let Some(task) = self
            .listening
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// The queue a notification names, if it is apalis' insert notification.
pub(crate) fn queue_of(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Insert {
        job_type: String,
    }
    serde_json::from_str::<Insert>(payload)
        .ok()
        .map(|i| i.job_type)
}

/// Listens until the store is gone: on a one-connection pool of its own (the store's
/// settings), reconnecting with a backoff (100 ms doubling to 5 s) after an error. Each
/// notification wakes its queue's workers; a reconnection wakes them all (a push may have
/// landed while nobody listened).
async fn listen(wakes: Weak<Wakes>) {
    let options = match wakes.upgrade() {
        Some(w) => (*w.pool.connect_options()).clone(),
        None => return,
    };
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "queue listener: connecting failed; polling meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        listener.ignore_pool_close_event(true);
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::debug!(error = %e, "queue listener: LISTEN failed; polling meanwhile");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        wake_all(&wakes);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let Some(w) = wakes.upgrade() else { return };
                    if let Some(queue) = queue_of(n.payload()) {
                        w.wake(&queue);
                    }
                }
                // The connection was lost; the next receive reconnects (and listens again).
                Ok(None) => wake_all(&wakes),
                Err(e) => {
                    tracing::debug!(error = %e, "queue listener lost its connection");
                    break;
                }
            }
            if wakes.strong_count() == 0 {
                return;
            }
        }
    }
}

fn wake_all(wakes: &Weak<Wakes>) {
    if let Some(w) = wakes.upgrade() {
        let queues = w.queues.lock().unwrap_or_else(|e| e.into_inner());
        for tx in queues.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_its_queue() {
        assert_eq!(
            queue_of(r#"{"job_type":"thumbs","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","run_at":"x"}"#),
            Some("thumbs".into())
        );
        assert_eq!(queue_of("not json"), None);
        assert_eq!(queue_of(r#"{"id":"x"}"#), None);
    }
}
