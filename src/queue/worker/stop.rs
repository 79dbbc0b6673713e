//! The stop, bounded by one deadline: `shutdown_timeout` for running tasks, then at most
//! [`STOP_MARGIN`] to hand back what is left and stop apalis, whatever the store does.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use super::shared::{AtomicPhase, Phase, QueueStats, Running, Shared};
#[cfg(doc)]
use super::QueueWorker;
use crate::queue::store::Intent;

/// How far past its `shutdown_timeout` a [`QueueWorker::stop`] may run, at most: handing
/// back running tasks that outran the timeout, stopping apalis, handing back what the worker
/// holds. Each step gets a share; a store that does not answer in time (locked by another
/// process, frozen, gone) leaves what it holds to orphan recovery.
pub const STOP_MARGIN: Duration = Duration::from_secs(1);

/// Shares of the margin: running tasks hand back, then apalis stops; the rest is for the
/// final hand-back.
const HAND_BACK_RUNNING: Duration = Duration::from_millis(400);
const STOP_APALIS: Duration = Duration::from_millis(300);

/// Stops the worker whose parts are `shared` and `running` (see [`QueueWorker::stop`]).
pub(super) async fn stop<S: Send + 'static, T>(
    shared: &Shared<S, T>,
    running: &Mutex<Option<Running>>,
) -> QueueStats {
    let running = {
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        let taken = running.take();
        if taken.is_some() {
            // Under the same lock as `start`'s check: no start slips in between.
            shared.phase.set(Phase::Stopping);
        }
        taken
    };
    let Some(Running {
        mut join,
        housekeeping,
    }) = running
    else {
        return shared.stats();
    };
    // However this future ends (also if it is dropped midway): the worker is aborted (what it
    // held runs again after the orphan timeout; after a complete stop this does nothing) and
    // `start` may run again.
    struct Finally<'a> {
        phase: &'a AtomicPhase,
        abort: [tokio::task::AbortHandle; 2],
    }
    impl Drop for Finally<'_> {
        fn drop(&mut self) {
            for a in &self.abort {
                a.abort();
            }
            self.phase.set(Phase::Idle);
        }
    }
    let _finally = Finally {
        phase: &shared.phase,
        abort: [join.abort_handle(), housekeeping.abort_handle()],
    };
    let outstanding = &shared.counters.outstanding;
    let deadline = Instant::now().checked_add(shared.settings.shutdown_timeout);
    // Tasks waiting for a lease give up at once; running ones get the shutdown timeout.
    shared.give_up.notify_waiters();
    // apalis' stop stops the loop that drains its own event channel, while tasks still in
    // flight may wait for room in that channel (it holds `batch_size` events): stopping it
    // under them deadlocks. So: claim nothing more, let every task's pipeline finish, then stop
    // apalis, which writes what is left.
    let drained = until(deadline, || {
        outstanding.load(Ordering::SeqCst) == 0 || join.is_finished()
    })
    .await;
    let margin_from = deadline.unwrap_or_else(Instant::now);
    let hard = margin_from.checked_add(STOP_MARGIN);
    if !drained {
        tracing::warn!(
            worker = %shared.instance(),
            running = shared.counters.running.load(Ordering::Relaxed),
            "tasks outran the queue worker's shutdown timeout: handing them back"
        );
        shared.phase.set(Phase::GivingUp);
        shared.give_up.notify_waiters();
        until(margin_from.checked_add(HAND_BACK_RUNNING), || {
            outstanding.load(Ordering::SeqCst) == 0 || join.is_finished()
        })
        .await;
    }
    let stop_apalis = async {
        // apalis refuses `stop` until its worker has started (or while it restarts after an
        // error): ask again until it takes.
        while !shared.stop_current() && !join.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (&mut join).await
    };
    let apalis_by = margin_from.checked_add(HAND_BACK_RUNNING + STOP_APALIS);
    if within(apalis_by, stop_apalis).await.is_none() {
        tracing::warn!(worker = %shared.instance(), "queue worker did not wind down in time; aborted");
        join.abort();
        let _ = join.await;
    }
    housekeeping.abort();
    let _ = housekeeping.await;
    // Read only now: `supervise` names each apalis worker it starts.
    let instance = shared.instance();
    let unsettled = shared.take_unsettled();
    // What this worker may still hold: tasks whose pipeline did not finish, deferrals not
    // given back.
    let held = outstanding.load(Ordering::SeqCst)
        + unsettled
            .iter()
            .filter(|(_, i)| matches!(i, Intent::GiveBack { .. }))
            .count();
    let release = shared
        .store
        .release_worker(&shared.name, &instance, &unsettled);
    let failure = match within(hard, release).await {
        Some(Ok(n)) => {
            if n > 0 {
                tracing::debug!(worker = %instance, tasks = n, "handed back to the queue");
            }
            None
        }
        Some(Err(e)) => Some(e.to_string()),
        None => Some(format!(
            "the store did not answer within the stop's deadline ({:?} + {STOP_MARGIN:?})",
            shared.settings.shutdown_timeout
        )),
    };
    if let Some(why) = failure {
        shared
            .counters
            .not_handed_back
            .fetch_add(held as u64, Ordering::Relaxed);
        tracing::warn!(queue = %shared.name, worker = %instance, tasks = held, reason = %why, "could not hand tasks back; they run again after the orphan timeout");
    }
    tracing::info!(queue = %shared.name, worker = %instance, "queue worker stopped");
    shared.stats()
}

/// Waits until `done()` (polled every 2 ms) or `deadline` (`None`: no deadline); whether it
/// was done.
async fn until(deadline: Option<Instant>, mut done: impl FnMut() -> bool) -> bool {
    while !done() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// `fut`'s output, or `None` if `deadline` passed first (`None`: no deadline).
async fn within<F: std::future::Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}
