//! The worker's side: [`QueueWorker`] claims tasks of one queue while its [`LeaseManager`] has
//! room and runs each on a lease of its own.
//!
//! - `builder.rs`: [`QueueWorkerBuilder`], settings and their ranges;
//! - `supervise.rs`: runs apalis workers one after another, replacing one that fails;
//! - `gate.rs`: claims only while the manager has room (the apalis service's `poll_ready`);
//! - `task.rs`: one task's run, from the fetched bytes to the queue's answer;
//! - `outcome.rs`: the pure mapping of what happened to what the queue is told;
//! - `settle.rs`: sets right what apalis' acknowledgements leave, and the periodic sweep;
//! - `stop.rs`: the stop, bounded by one deadline.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::QueueError;
#[cfg(doc)]
use crate::LeaseManager;

pub(crate) mod builder;
mod gate;
mod metrics;
mod outcome;
mod settle;
mod shared;
mod stop;
mod supervise;
mod task;

pub use shared::QueueStats;
use shared::{Phase, Running, Shared};
pub use stop::STOP_MARGIN;

/// Runs tasks of one queue on leases of a [`LeaseManager`]; see the [module](super) docs.
pub struct QueueWorker<S: 'static, T> {
    shared: Arc<Shared<S, T>>,
    running: Mutex<Option<Running>>,
}

impl<S: 'static, T> fmt::Debug for QueueWorker<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueWorker")
            .field("queue", &self.shared.name)
            .field("instance", &self.shared.instance())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S: 'static, T> QueueWorker<S, T> {
    /// This worker's unique name in the queue (it appears as `locked_by` on the tasks it
    /// holds). Each start after the first adds `.N` to the name it was built with.
    pub fn instance_name(&self) -> String {
        self.shared.instance().to_string()
    }

    /// Counters since the worker was built.
    pub fn stats(&self) -> QueueStats {
        self.shared.stats()
    }

    /// Why the queue worker last failed and was replaced, if it ever did.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the worker is claiming tasks.
    pub fn is_running(&self) -> bool {
        self.shared.phase.get() == Phase::Running
            && self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|r| !r.join.is_finished())
    }
}

impl<S, T> QueueWorker<S, T>
where
    S: Send + 'static,
    T: serde::de::DeserializeOwned + Send + 'static,
{
    /// Starts claiming tasks, on the current tokio runtime (actix's `System` is one). The
    /// worker runs until [`stop`](Self::stop).
    ///
    /// # Errors
    /// [`QueueError::NoRuntime`] outside a tokio runtime; [`QueueError::AlreadyRunning`];
    /// [`QueueError::Stopping`] while a `stop` is under way.
    pub fn start(&self) -> Result<(), QueueError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| QueueError::NoRuntime)?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &self.shared;
        match shared.phase.get() {
            Phase::Stopping | Phase::GivingUp => {
                return Err(QueueError::Stopping(self.instance_name()))
            }
            Phase::Running if running.as_ref().is_some_and(|r| !r.join.is_finished()) => {
                return Err(QueueError::AlreadyRunning(self.instance_name()))
            }
            Phase::Running | Phase::Idle => {}
        }
        // A run whose supervisor ended (it panicked outside apalis): its housekeeping goes too.
        if let Some(old) = running.take() {
            old.housekeeping.abort();
        }
        shared.phase.set(Phase::Running);
        // The last run's context is stopped already: `stop` must wait for this run's.
        *shared.context.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let join = handle.spawn(supervise::supervise(Arc::clone(shared)));
        let housekeeping = handle.spawn(settle::housekeeping(Arc::clone(shared)));
        *running = Some(Running { join, housekeeping });
        Ok(())
    }

    /// Stops claiming, lets running tasks finish within the shutdown timeout, hands the rest
    /// back to the queue (attempts not counted), and returns the final counters.
    ///
    /// Bounded by one deadline: returns within `shutdown_timeout` + [`STOP_MARGIN`] whatever
    /// the store does (locked by another process, frozen, gone). What could not be handed back
    /// by then is counted ([`QueueStats::not_handed_back`]), logged, and runs again after the
    /// orphan timeout.
    ///
    /// # Cancel safety
    /// Dropping the returned future aborts the worker, as dropping the `QueueWorker` does.
    ///
    /// [`STOP_MARGIN`]: super::STOP_MARGIN
    pub async fn stop(&self) -> QueueStats {
        stop::stop(&self.shared, &self.running).await
    }
}

impl<S: 'static, T> Drop for QueueWorker<S, T> {
    fn drop(&mut self) {
        // Never blocks: the worker task is aborted; what it held runs again after the orphan
        // timeout. Call `stop` for a graceful end.
        if let Some(r) = self
            .running
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.shared.phase.set(Phase::Idle);
            let _ = self.shared.stop_current();
            r.join.abort();
            r.housekeeping.abort();
        }
    }
}
