//! Runs apalis workers one after another under fresh names until the worker stops: one that
//! ends on an error (the store failed, its file was replaced) or panics (a bug in a
//! dependency) is replaced after a backoff, and what it held goes back to the queue.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis_core::worker::context::WorkerContext;
use apalis_core::worker::event::Event;
use futures_util::FutureExt as _;
use serde::de::DeserializeOwned;

use super::gate::LeasedService;
use super::shared::{Phase, Shared};
use crate::queue::store::{DynService, RunSpec};

/// How long handing back a failed worker's tasks may take.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

pub(super) async fn supervise<S, T>(shared: Arc<Shared<S, T>>)
where
    S: Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    let mut backoff = Duration::from_millis(100);
    while shared.phase.get() == Phase::Running {
        let n = shared.starts.fetch_add(1, Ordering::SeqCst);
        let instance: Arc<str> = if n == 0 {
            Arc::from(shared.base.as_str())
        } else {
            Arc::from(format!("{}.{n}", shared.base))
        };
        *shared.instance.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&instance);
        let context = WorkerContext::new(&instance);
        *shared.context.lock().unwrap_or_else(|e| e.into_inner()) = Some(context.clone());
        // The last worker's futures are gone (it returned or was aborted).
        shared.counters.outstanding.store(0, Ordering::SeqCst);
        tracing::info!(queue = %shared.name, worker = %instance, "queue worker started");
        let began = Instant::now();
        let spec = run_spec(&shared, context);
        let result = AssertUnwindSafe(Arc::clone(&shared.store).run(spec))
            .catch_unwind()
            .await;
        if shared.phase.get() != Phase::Running {
            return;
        }
        let why = match result {
            Ok(Ok(())) => "the worker ended".to_string(),
            Ok(Err(e)) => e,
            Err(panic) => format!(
                "the queue worker panicked: {}",
                leasepool_actors::plumbing::panic_message(panic.as_ref())
            ),
        };
        shared.counters.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(queue = %shared.name, worker = %instance, error = %why, ?backoff, "queue worker failed; starting a new one");
        shared.set_last_error(why);
        let unsettled = shared.take_unsettled();
        let release = shared
            .store
            .release_worker(&shared.name, &instance, &unsettled);
        if let Ok(Err(e)) = tokio::time::timeout(RELEASE_WITHIN, release).await {
            tracing::warn!(worker = %instance, error = %e, "could not hand tasks back; they run again after the orphan timeout");
        }
        // A SQLite file deleted or replaced under us: new connections, all on the new file.
        if let Err(e) = shared.store.reopen().await {
            tracing::warn!(queue = %shared.name, error = %e, "reopening the queue store failed");
        }
        if began.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(100);
        }
        let woken = shared.give_up.notified();
        if shared.phase.get() != Phase::Running {
            return;
        }
        let _ = tokio::time::timeout(backoff, woken).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn run_spec<S, T>(shared: &Arc<Shared<S, T>>, context: WorkerContext) -> RunSpec
where
    S: Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    let outstanding = Arc::clone(&shared.counters.outstanding);
    #[cfg(feature = "testing")]
    let panics = Arc::clone(shared);
    let on_event = move |_: &WorkerContext, event: &Event| {
        #[cfg(feature = "testing")]
        if matches!(event, Event::Start)
            && panics
                .start_panics
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            panic!("an injected panic inside the apalis worker (testing)");
        }
        if matches!(event, Event::Success(_) | Event::Error(_)) {
            let _ =
                outstanding.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
    };
    let counted = Arc::clone(shared);
    let on_unreadable = Arc::new(move |id: &str, why: &str| {
        counted.counters.failed.fetch_add(1, Ordering::Relaxed);
        counted
            .counters
            .metrics
            .task(super::outcome::Counter::Failed);
        tracing::error!(queue = %counted.name, task = id, error = why, "queue task failed for good: apalis cannot read it");
    });
    RunSpec {
        queue: shared.name.clone(),
        context,
        heartbeat: shared.settings.orphan_timeout / 3,
        poll_interval: shared.settings.poll_interval,
        on_event: Box::new(on_event),
        on_unreadable,
        service: DynService(Box::new(LeasedService::new(Arc::clone(shared)))),
    }
}
