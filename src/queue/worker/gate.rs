//! The admission gate: the apalis service's `poll_ready`, which lets apalis fetch only while
//! the manager has room for one more task of ours (plus the prefetch), so that a saturated
//! instance leaves tasks for the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use super::shared::{Phase, Shared};
use super::task;
use crate::queue::store::{TaskFuture, TaskService};

/// How long a full gate waits for one of our own releases before it looks again (another
/// user's release is not announced to us).
const RECHECK: Duration = Duration::from_millis(20);

/// The apalis service: claims only while the manager has room, runs each task on a lease.
pub(super) struct LeasedService<S: 'static, T> {
    shared: Arc<Shared<S, T>>,
    /// The gate was full: a release of ours, or [`RECHECK`], before it looks again.
    recheck: Option<BoxFuture<'static, ()>>,
    /// Wakes the worker every `poll_interval` while it is ready: apalis 1.0's interval
    /// strategy can consume its tick and then park on an empty fetch with no timer armed,
    /// which left an idle worker deaf to new tasks until its next heartbeat.
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Sleeps out a claim pause (see `Shared::claim_pause`).
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Send + 'static, T: Send + 'static> LeasedService<S, T> {
    pub(super) fn new(shared: Arc<Shared<S, T>>) -> Self {
        LeasedService {
            shared,
            recheck: None,
            tick: None,
            paused: None,
        }
    }

    fn arm_tick(&mut self, cx: &mut Context<'_>) {
        let every = self.shared.settings.poll_interval;
        let tick = self
            .tick
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if tick.as_mut().poll(cx).is_ready() {
            tick.as_mut().reset(tokio::time::Instant::now() + every);
            let _ = tick.as_mut().poll(cx);
        }
    }

    /// Whether the manager has room for one more task of ours: its free leases now (the
    /// engine's cheap [`capacity`](crate::LeaseManager::capacity), read afresh each time) plus
    /// the prefetch, against our tasks still waiting for a lease. (A lease of ours granted a
    /// moment ago may count both as leased and as still waiting: the gate errs on the side of
    /// claiming less, never more.)
    fn has_room(&self) -> bool {
        let free = self.shared.manager.capacity().free();
        let waiting = self.shared.counters.waiting.load(Ordering::SeqCst);
        waiting < free + self.shared.settings.prefetch
    }

    /// Whether a claim pause is on; arms its timer if so.
    fn claim_paused(&mut self, cx: &mut Context<'_>) -> bool {
        let until = self
            .shared
            .claim_pause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0;
        let Some(until) = until.filter(|u| *u > Instant::now()) else {
            return false;
        };
        let deadline = tokio::time::Instant::from_std(until);
        let sleep = self
            .paused
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_pending()
    }
}

impl<S, T> TaskService for LeasedService<S, T>
where
    S: Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        if self.shared.phase.get() != Phase::Running {
            // Stopping: claim nothing more (apalis may not have taken the stop yet). `stop`
            // wakes the worker through apalis' own stop.
            return Poll::Pending;
        }
        if self.claim_paused(cx) {
            return Poll::Pending;
        }
        loop {
            if let Some(recheck) = &mut self.recheck {
                if recheck.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.recheck = None;
            }
            if self.has_room() {
                self.arm_tick(cx);
                return Poll::Ready(Ok(()));
            }
            let shared = Arc::clone(&self.shared);
            self.recheck = Some(Box::pin(async move {
                let _ = tokio::time::timeout(RECHECK, shared.freed.notified()).await;
            }));
        }
    }

    fn call(&mut self, task: Task<Vec<u8>>) -> TaskFuture {
        task::call(Arc::clone(&self.shared), task)
    }
}
