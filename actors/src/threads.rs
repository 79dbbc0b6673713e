//! Tracking worker threads so `stop` can wait for them.
//!
//! actix's `SyncArbiter` spawns detached threads and keeps no handles (rule 5 of the design), so
//! a thread is counted when the pool asks for its builder (on the host, before the spawn) and
//! uncounted by a thread-local token whose destructor runs when the thread exits, after its last
//! job and after its state was dropped.
//!
//! That destructor runs while the thread's other thread-locals (tokio's among them) may already
//! be gone, so it only touches an atomic and a std mutex; it never wakes a task. `stop` polls.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::stats::PoolId;

/// Live worker threads of one manager run.
#[derive(Debug)]
pub(crate) struct WorkerThreads {
    names: Mutex<Vec<String>>,
    per_pool: Mutex<HashMap<PoolId, usize>>,
    live: AtomicUsize,
}

impl WorkerThreads {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            names: Mutex::new(Vec::new()),
            per_pool: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
        })
    }

    /// Counts a thread of `pool` that is about to be spawned under `name`.
    pub(crate) fn expect(&self, pool: PoolId, name: &str) {
        self.lock_names().push(name.to_owned());
        *self.lock_pools().entry(pool).or_insert(0) += 1;
        self.live.fetch_add(1, SeqCst);
    }

    /// Threads of `pool` that have not exited yet.
    pub(crate) fn live_in(&self, pool: PoolId) -> usize {
        self.lock_pools().get(&pool).copied().unwrap_or(0)
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, HashMap<PoolId, usize>> {
        self.per_pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called on a worker thread each time its actor is built: the first call installs the
    /// token whose destructor uncounts the thread at exit.
    pub(crate) fn adopt_current_thread(self: &Arc<Self>, pool: PoolId) {
        EXIT_TOKEN.with(|token| {
            let mut token = token.borrow_mut();
            if token.is_none() {
                let name = std::thread::current().name().unwrap_or_default().to_owned();
                *token = Some(ExitToken {
                    threads: Arc::clone(self),
                    pool,
                    name,
                });
            }
        });
    }

    /// Waits until every counted thread has exited; returns the names still alive on timeout.
    /// Runs on the host runtime; polls every 2 ms.
    pub(crate) async fn wait_all_exited(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.live() == 0 {
                return Vec::new();
            }
            if Instant::now() >= deadline {
                return self.lock_names().clone();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Worker threads alive now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(SeqCst)
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct ExitToken {
    threads: Arc<WorkerThreads>,
    pool: PoolId,
    name: String,
}

impl Drop for ExitToken {
    fn drop(&mut self) {
        {
            let mut names = self.threads.lock_names();
            if let Some(at) = names.iter().position(|n| *n == self.name) {
                names.swap_remove(at);
            }
        }
        {
            let mut pools = self.threads.lock_pools();
            if let Some(n) = pools.get_mut(&self.pool) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pools.remove(&self.pool);
                }
            }
        }
        self.threads.live.fetch_sub(1, SeqCst);
    }
}

thread_local! {
    static EXIT_TOKEN: RefCell<Option<ExitToken>> = const { RefCell::new(None) };
}
