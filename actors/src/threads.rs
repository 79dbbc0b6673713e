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
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Live worker threads of one manager run.
#[derive(Debug)]
pub(crate) struct WorkerThreads {
    names: Mutex<Vec<String>>,
    live: AtomicUsize,
}

impl WorkerThreads {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            names: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
        })
    }

    /// Counts a thread that is about to be spawned under `name`.
    pub(crate) fn expect(&self, name: &str) {
        self.lock_names().push(name.to_owned());
        self.live.fetch_add(1, SeqCst);
    }

    /// Called on a worker thread each time its actor is built: the first call installs the
    /// token whose destructor uncounts the thread at exit.
    pub(crate) fn adopt_current_thread(self: &Arc<Self>) {
        EXIT_TOKEN.with(|token| {
            let mut token = token.borrow_mut();
            if token.is_none() {
                let name = std::thread::current().name().unwrap_or_default().to_owned();
                *token = Some(ExitToken {
                    threads: Arc::clone(self),
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
        self.threads.live.fetch_sub(1, SeqCst);
    }
}

thread_local! {
    static EXIT_TOKEN: RefCell<Option<ExitToken>> = const { RefCell::new(None) };
}
