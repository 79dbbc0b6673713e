//! Tracking worker threads so `stop` can wait for them.
//!
//! actix's `SyncArbiter` spawns detached threads and keeps no handles (rule 5 of the design), so
//! a thread is counted when the pool asks for its builder (on the host, before the spawn) and
//! uncounted by a thread-local token whose destructor runs when the thread exits, after its last
//! job and after its state was dropped.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Live worker threads of one manager run.
#[derive(Debug)]
pub(crate) struct WorkerThreads {
    names: Mutex<Vec<String>>,
    live: watch::Sender<usize>,
}

impl WorkerThreads {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            names: Mutex::new(Vec::new()),
            live: watch::Sender::new(0),
        })
    }

    /// Counts a thread that is about to be spawned under `name`.
    pub(crate) fn expect(&self, name: &str) {
        self.lock_names().push(name.to_owned());
        self.live.send_modify(|n| *n += 1);
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
    pub(crate) async fn wait_all_exited(&self, timeout: std::time::Duration) -> Vec<String> {
        let mut rx = self.live.subscribe();
        let done = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
        match done {
            Ok(_) => Vec::new(),
            Err(_) => self.lock_names().clone(),
        }
    }

    /// Worker threads alive now.
    pub(crate) fn live(&self) -> usize {
        *self.live.borrow()
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
        self.threads.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

thread_local! {
    static EXIT_TOKEN: RefCell<Option<ExitToken>> = const { RefCell::new(None) };
}
