//! The state a queue worker's parts share: its settings, counters, lifecycle phase, the
//! intents waiting for apalis' acknowledgements, and the function that runs each task.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis_core::worker::context::WorkerContext;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use super::super::store::{Intent, Store};
use super::super::{Queue, RetryPolicy};
use crate::{LeaseError, LeaseManager};

/// How a worker runs one decoded task on its lease: the job's own answer, or the lease's error.
pub(crate) type RunFn<S, T> = dyn Fn(crate::Lease<S>, T) -> BoxFuture<'static, Result<Result<(), String>, LeaseError>>
    + Send
    + Sync;

/// What a [`QueueWorker`](super::QueueWorker) has done since it was built
/// ([`QueueWorker::stats`](super::QueueWorker::stats)).
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
pub(super) struct Counters {
    pub(super) claimed: AtomicU64,
    pub(super) done: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) put_back: AtomicU64,
    pub(super) handed_back: AtomicU64,
    pub(super) not_handed_back: AtomicU64,
    pub(super) running: Arc<AtomicUsize>,
    /// Claimed, no lease yet.
    pub(super) waiting: Arc<AtomicUsize>,
    pub(super) restarts: AtomicU64,
    /// Tasks handed to the current apalis worker whose whole pipeline (ours, then apalis'
    /// acknowledgement) has not finished: `call` adds one, apalis' result event takes it away.
    pub(super) outstanding: Arc<AtomicUsize>,
    /// The same events through the `metrics` facade (feature `metrics`).
    pub(super) metrics: super::metrics::TaskMetrics,
}

/// Where a worker is in its life: one value, not a set of flags whose combinations nobody
/// enumerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
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

pub(super) struct AtomicPhase(pub(super) AtomicU8);

impl AtomicPhase {
    pub(super) fn get(&self) -> Phase {
        match self.0.load(Ordering::SeqCst) {
            1 => Phase::Running,
            2 => Phase::Stopping,
            3 => Phase::GivingUp,
            _ => Phase::Idle,
        }
    }

    pub(super) fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }
}

/// The settings a worker was built with (checked by the builder).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) prefetch: usize,
    pub(super) poll_interval: Duration,
    pub(super) orphan_timeout: Duration,
    pub(super) lease_wait: Duration,
    pub(super) lease_for: Option<Duration>,
    pub(super) shutdown_timeout: Duration,
    pub(super) retry: RetryPolicy,
    /// Testing only: deferrals are settled no sooner than this after they were made.
    pub(super) hold_deferrals: Duration,
}

/// An intent waiting for apalis' acknowledgement to reach the store (see `settle.rs`).
#[derive(Debug, Clone)]
pub(super) struct Unsettled {
    pub(super) id: String,
    pub(super) intent: Intent,
    pub(super) since: Instant,
}

pub(super) struct Shared<S: 'static, T> {
    /// Given each task's span (`QueueWorkerBuilder::on_task_span`).
    pub(super) span_hook: Option<Arc<crate::queue::trace::SpanHook>>,
    pub(super) manager: LeaseManager<S>,
    pub(super) queue: Queue,
    pub(super) store: Arc<dyn Store>,
    pub(super) name: String,
    /// The name given or made at build time; each start after the first adds `.N` (apalis
    /// refuses a name whose last heartbeat is recent).
    pub(super) base: String,
    pub(super) instance: Mutex<Arc<str>>,
    pub(super) starts: AtomicU64,
    /// The current apalis worker's context (to stop it).
    pub(super) context: Mutex<Option<WorkerContext>>,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) settings: Settings,
    pub(super) counters: Counters,
    pub(super) phase: AtomicPhase,
    /// One of our leases was released: the capacity gate looks again.
    pub(super) freed: Notify,
    pub(super) run: Arc<RunFn<S, T>>,
    pub(super) unsettled: Mutex<Vec<Unsettled>>,
    /// A new intent to settle (wakes the housekeeping task).
    pub(super) to_settle: Notify,
    /// After a put-back (no lease came: overload, a stopped manager), claiming pauses until
    /// then, the pause doubling from 50 ms up to 2 s while put-backs go on; a lease resets it.
    pub(super) claim_pause: Mutex<(Option<Instant>, Duration)>,
    /// The phase moved on from `Running`: tasks waiting for a lease (and, once giving up,
    /// running ones) hand back.
    pub(super) give_up: Notify,
    /// Testing only: the next this-many apalis workers panic as they start.
    #[cfg(feature = "testing")]
    pub(super) start_panics: AtomicUsize,
}

impl<S: 'static, T> Shared<S, T> {
    /// The worker's counters as [`QueueStats`].
    pub(super) fn stats(&self) -> QueueStats {
        let c = &self.counters;
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

    pub(super) fn instance(&self) -> Arc<str> {
        Arc::clone(&self.instance.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Asks the current apalis worker to stop; false if it refused (not started yet).
    pub(super) fn stop_current(&self) -> bool {
        match &*self.context.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => c.stop().is_ok(),
            None => false,
        }
    }

    pub(super) fn set_last_error(&self, why: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub(super) fn take_unsettled(&self) -> Vec<(String, Intent)> {
        std::mem::take(&mut *self.unsettled.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|u| (u.id, u.intent))
            .collect()
    }
}

pub(super) struct Running {
    pub(super) join: tokio::task::JoinHandle<()>,
    pub(super) housekeeping: tokio::task::JoinHandle<()>,
}
