//! Tracking worker threads so `stop` can wait for them.
//!
//! actix's `SyncArbiter` spawns detached threads and keeps no handles (rule 5 of the design), so
//! a thread is counted when the pool asks for its builder (on the host, before the spawn) and
//! uncounted by a thread-local token whose destructor runs when the thread exits, after its last
//! job and after its state was dropped. A spawn that fails is uncounted by the pool.
//!
//! That destructor runs while the thread's other thread-locals (tokio's among them) may already
//! be gone, so it only touches an atomic and a std mutex; it never wakes a task. `stop` polls.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::stats::PoolId;
use crate::sync::lock;

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
    pub(crate) fn will_spawn(&self, pool: PoolId, name: &str) {
        self.lock_names().push(name.to_owned());
        *self.lock_pools().entry(pool).or_insert(0) += 1;
        self.live.fetch_add(1, SeqCst);
    }

    /// Uncounts a thread whose spawn failed.
    pub(crate) fn spawn_failed(&self, pool: PoolId, name: &str) {
        self.forget(pool, name);
    }

    fn forget(&self, pool: PoolId, name: &str) {
        {
            let mut names = self.lock_names();
            if let Some(at) = names.iter().position(|n| n == name) {
                names.swap_remove(at);
            }
        }
        {
            let mut pools = self.lock_pools();
            if let Some(n) = pools.get_mut(&pool) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pools.remove(&pool);
                }
            }
        }
        self.live.fetch_sub(1, SeqCst);
    }

    /// The pools that still have at least one thread alive.
    pub(crate) fn pools_with_threads(&self) -> HashSet<PoolId> {
        self.lock_pools().keys().copied().collect()
    }

    fn lock_pools(&self) -> MutexGuard<'_, HashMap<PoolId, usize>> {
        lock(&self.per_pool)
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
    /// A timeout too long to represent waits as long as it takes. Runs on the host runtime;
    /// polls every 2 ms.
    pub(crate) async fn wait_all_exited(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.live() == 0 {
                return Vec::new();
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return self.lock_names().clone();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Worker threads alive now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(SeqCst)
    }

    fn lock_names(&self) -> MutexGuard<'_, Vec<String>> {
        lock(&self.names)
    }
}

struct ExitToken {
    threads: Arc<WorkerThreads>,
    pool: PoolId,
    name: String,
}

impl Drop for ExitToken {
    fn drop(&mut self) {
        self.threads.forget(self.pool, &self.name);
    }
}

thread_local! {
    static EXIT_TOKEN: RefCell<Option<ExitToken>> = const { RefCell::new(None) };
}
