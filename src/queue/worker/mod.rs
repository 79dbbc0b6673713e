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
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis_core::worker::context::WorkerContext;
use tokio::sync::Notify;

use super::store::{Intent, Store};
use super::{Queue, QueueError, RetryPolicy};
use crate::LeaseManager;

mod builder;
mod gate;
mod outcome;
mod settle;
pub(crate) mod stop;
mod supervise;
mod task;

pub use builder::QueueWorkerBuilder;
pub(crate) use builder::RunFn;
pub use stop::STOP_MARGIN;

/// What a [`QueueWorker`] has done since it was built ([`QueueWorker::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueStats {
    /// Tasks taken from the queue.
    pub claimed: u64,
    /// Tasks done and acknowledged.
    pub done: u64,
    /// Attempts that failed through no fault of the job (`WorkerLost`, `Expired`): retried.
    pub retried: u64,
    /// Attempts that failed: the job returned an error, panicked, or cannot run here; tasks
    /// that do not decode or that apalis cannot read.
    pub failed: u64,
    /// Tasks put back because no lease came (overload): not counted as attempts.
    pub put_back: u64,
    /// Tasks handed back by a stop (not started, or past the shutdown timeout).
    pub handed_back: u64,
    /// Tasks a stop could not hand back before its deadline (the store was locked, frozen or
    /// gone): they run again after the orphan timeout.
    pub not_handed_back: u64,
    /// Tasks running on a lease now.
    pub running: u64,
    /// Tasks claimed and waiting for a lease now (the prefetch).
    pub waiting: u64,
    /// Times the queue worker failed (its store failed, its file was replaced) and was
    /// replaced.
    pub restarts: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    done: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    put_back: AtomicU64,
    handed_back: AtomicU64,
    not_handed_back: AtomicU64,
    running: Arc<AtomicUsize>,
    /// Claimed, no lease yet.
    waiting: Arc<AtomicUsize>,
    restarts: AtomicU64,
    /// Tasks handed to the current apalis worker whose whole pipeline (ours, then apalis'
    /// acknowledgement) has not finished: `call` adds one, apalis' result event takes it away.
    outstanding: Arc<AtomicUsize>,
}

/// Where a worker is in its life: one value, not a set of flags whose combinations nobody
/// enumerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Built or stopped: `start` may run.
    Idle = 0,
    /// Claiming and running tasks.
    Running = 1,
    /// A stop is under way: nothing more is claimed, tasks waiting for a lease are handed
    /// back, running ones may finish; `start` is refused.
    Stopping = 2,
    /// The stop's timeout passed: running tasks are handed back too.
    GivingUp = 3,
}

struct AtomicPhase(AtomicU8);

impl AtomicPhase {
    fn get(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            1 => Phase::Running,
            2 => Phase::Stopping,
            3 => Phase::GivingUp,
            _ => Phase::Idle,
        }
    }

    fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }
}

/// The settings a worker was built with (checked by the builder).
#[derive(Debug, Clone)]
struct Settings {
    prefetch: usize,
    poll_interval: Duration,
    orphan_timeout: Duration,
    lease_wait: Duration,
    lease_for: Option<Duration>,
    shutdown_timeout: Duration,
    retry: RetryPolicy,
    /// Testing only: deferrals are settled no sooner than this after they were made.
    hold_deferrals: Duration,
}

/// An intent waiting for apalis' acknowledgement to reach the store (see `settle.rs`).
#[derive(Debug, Clone)]
struct Unsettled {
    id: String,
    intent: Intent,
    since: Instant,
}

struct Shared<S: 'static, T> {
    manager: LeaseManager<S>,
    queue: Queue,
    store: Arc<dyn Store>,
    name: String,
    /// The name given or made at build time; each start after the first adds `.N` (apalis
    /// refuses a name whose last heartbeat is recent).
    base: String,
    instance: Mutex<Arc<str>>,
    starts: AtomicU64,
    /// The current apalis worker's context (to stop it).
    context: Mutex<Option<WorkerContext>>,
    last_error: Mutex<Option<String>>,
    settings: Settings,
    counters: Counters,
    phase: AtomicPhase,
    /// One of our leases was released: the capacity gate looks again.
    freed: Notify,
    run: Arc<RunFn<S, T>>,
    unsettled: Mutex<Vec<Unsettled>>,
    /// A new intent to settle (wakes the housekeeping task).
    to_settle: Notify,
    /// After a put-back (no lease came: overload, a stopped manager), claiming pauses until
    /// then, the pause doubling from 50 ms up to 2 s while put-backs go on; a lease resets it.
    claim_pause: Mutex<(Option<Instant>, Duration)>,
    /// The phase moved on from `Running`: tasks waiting for a lease (and, once giving up,
    /// running ones) hand back.
    give_up: Notify,
    /// Testing only: the next this-many apalis workers panic as they start.
    #[cfg(feature = "testing")]
    start_panics: AtomicUsize,
}

impl<S: 'static, T> Shared<S, T> {
    fn instance(&self) -> Arc<str> {
        Arc::clone(&self.instance.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Asks the current apalis worker to stop; false if it refused (not started yet).
    fn stop_current(&self) -> bool {
        match &*self.context.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => c.stop().is_ok(),
            None => false,
        }
    }

    fn set_last_error(&self, why: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn take_unsettled(&self) -> Vec<(String, Intent)> {
        std::mem::take(&mut *self.unsettled.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|u| (u.id, u.intent))
            .collect()
    }
}

struct Running {
    join: tokio::task::JoinHandle<()>,
    housekeeping: tokio::task::JoinHandle<()>,
}

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

impl<S: 'static> QueueWorker<S, ()> {
    /// Starts building a worker for the queue named `queue` of `store`, running its tasks on
    /// leases of `manager`.
    pub fn builder(manager: &LeaseManager<S>, store: &Queue, queue: &str) -> QueueWorkerBuilder<S> {
        QueueWorkerBuilder::new(manager, store, queue)
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
        let c = &self.shared.counters;
        QueueStats {
            claimed: c.claimed.load(Ordering::Relaxed),
            done: c.done.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            put_back: c.put_back.load(Ordering::Relaxed),
            handed_back: c.handed_back.load(Ordering::Relaxed),
            not_handed_back: c.not_handed_back.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed) as u64,
            waiting: c.waiting.load(Ordering::Relaxed) as u64,
            restarts: c.restarts.load(Ordering::Relaxed),
        }
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
        stop::stop(self).await
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
