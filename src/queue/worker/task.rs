//! One claimed task, from the bytes apalis fetched to the queue's answer:
//!
//! 1. the store sets right what it must before the task runs (owed attempts on Redis);
//! 2. the attempt count and the stored settings are checked, the payload decoded;
//! 3. a lease of its own is acquired and the job runs on it;
//! 4. [`outcome`](super::outcome) maps what happened to the queue's answer; the intent to set
//!    right after apalis' acknowledgement (a retry time, an attempt to give back) is prepared
//!    in the store and queued for [`settle`](super::settle);
//! 5. failed attempts are logged at WARN (task, queue, attempt/max, error, next run), a task
//!    that fails for good at ERROR.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis_core::error::{AbortError, DeferredError};
use apalis_core::task::Task;
use serde::de::DeserializeOwned;

use super::outcome::{self, Answer, Attempt, Counter, Log, Ran};
use super::shared::{Phase, Shared, Unsettled};
use crate::queue::limits::check_stored_attempts;
use crate::queue::store::{Settled, TaskFuture, RETRY_META};
use crate::queue::trace::{self, TRACE_META};
use crate::queue::{payload, retry, RetryPolicy};
use tracing::Instrument;

/// apalis' default when a task has no stored `max_attempts`.
const APALIS_DEFAULT_ATTEMPTS: usize = 25;

pub(super) fn call<S, T>(shared: Arc<Shared<S, T>>, task: Task<Vec<u8>>) -> TaskFuture
where
    S: Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    shared.counters.claimed.fetch_add(1, Ordering::Relaxed);
    shared.counters.outstanding.fetch_add(1, Ordering::SeqCst);
    let waiting = Count::up(&shared.counters.waiting);
    let (bytes, ctx) = task.take();
    let id = ctx.task_id().map(ToString::to_string).unwrap_or_default();
    // The apalis worker that fetched the task (a restart renames it).
    let instance = shared.instance();
    let metadata: HashMap<String, String> = ctx
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Checked again here: the metadata may have been written by anyone.
    let traceparent = metadata
        .get(TRACE_META)
        .map(String::as_str)
        .filter(|t| trace::TraceParent::parse(t).is_ok());
    let span = trace::task_span(&shared.name, &id, traceparent);
    if let Some(hook) = &shared.span_hook {
        trace::call_hook(hook.as_ref(), &span, traceparent, &shared.name, &id);
    }
    Box::pin(
        async move {
        let store = &shared.store;
        // apalis counted this run before our future first ran.
        let apalis = ctx.attempt();
        let counted =
            retried(|| store.counted_attempt(&shared.name, &instance, &id, apalis, &metadata))
                .await;
        let max = ctx.max_attempts().unwrap_or(APALIS_DEFAULT_ATTEMPTS);
        let checked_max = check_stored_attempts(max);
        let attempt = Attempt {
            counted: *counted.as_ref().unwrap_or(&apalis),
            apalis,
            max: *checked_max.as_ref().unwrap_or(&1),
        };
        let ran = match (counted, &checked_max) {
            (Err(e), _) => {
                tracing::warn!(queue = %shared.name, task = %id, error = %e, "the store could not set a task right before its run; putting it back");
                Ran::NotNow("put back: the queue store failed")
            }
            (Ok(_), Err(why)) => Ran::Unrunnable(why.clone()),
            (Ok(counted), Ok(max)) if counted > *max as usize => Ran::OutOfAttempts(*max),
            (Ok(_), Ok(_)) => match payload::decode::<T>(&bytes, shared.queue.payload_limit()) {
                Err(why) => Ran::Unrunnable(why),
                Ok(args) => {
                    let run_at = ctx.run_at();
                    run(&shared, (&instance, &id, apalis, run_at), args, waiting).await
                }
            },
        };
        let policy = metadata
            .get(RETRY_META)
            .and_then(|m| RetryPolicy::from_meta(m))
            .unwrap_or(shared.settings.retry);
        let failed = u32::try_from(attempt.counted).unwrap_or(u32::MAX);
        let delay = policy.delay(failed, retry::random());
        let retry_at = retry_time(delay);
        let verdict = outcome::verdict(outcome::classify(ran), attempt, retry_at);
        // One stored permit: a release between the gate's "full" and its wait still counts.
        shared.freed.notify_one();
        count(&shared, verdict.counter);
        log(&shared.name, &id, attempt, &verdict.answer, verdict.log);
        if let Some(intent) = verdict.intent {
            // Before apalis acknowledges (and counts, and schedules) the attempt.
            // Until it lands while the worker runs: a retry or a give-back whose intent was not
            // recorded may be lost (apalis-redis kills a task at 25 attempts).
            let prepared = persistently(&shared, || {
                store.prepare(&shared.name, &instance, &id, &intent)
            })
            .await;
            match prepared {
                Ok(Settled::NotYet) => {
                    shared
                        .unsettled
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Unsettled {
                            id,
                            intent,
                            since: Instant::now(),
                        });
                    shared.to_settle.notify_one();
                }
                Ok(Settled::Done | Settled::Gone) => {}
                Err(e) => {
                    tracing::warn!(queue = %shared.name, task = %id, error = %e, "could not prepare a task's acknowledgement: a put-back may count as an attempt, a retry may run at apalis' own time");
                }
            }
        }
        match verdict.answer {
            Answer::Done => Ok(()),
            Answer::Retry(why) => Err(why.into()),
            Answer::Kill(why) => Err(AbortError::new(StrError(why)).into()),
            Answer::Defer(why) => Err(DeferredError::new(StrError(why)).into()),
        }
    }
        .instrument(span),
    )
}

/// When a retry `delay` from now is due, in whole seconds since 1970 (the stores' clock),
/// rounded up: never before now + `delay` (no delay: due now).
fn retry_time(delay: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if delay.is_zero() {
        return now.as_secs();
    }
    let at = now.saturating_add(delay);
    at.as_secs()
        .saturating_add(u64::from(at.subsec_nanos() > 0))
}

fn count<S, T>(shared: &Shared<S, T>, counter: Counter) {
    let c = &shared.counters;
    match counter {
        Counter::Done => &c.done,
        Counter::Failed => &c.failed,
        Counter::Retried => &c.retried,
        Counter::PutBack => &c.put_back,
        Counter::HandedBack => &c.handed_back,
    }
    .fetch_add(1, Ordering::Relaxed);
    c.metrics.task(counter);
}

fn log(queue: &str, id: &str, attempt: Attempt, answer: &Answer, log: Log) {
    let (Answer::Retry(error) | Answer::Kill(error) | Answer::Defer(error)) = answer else {
        return;
    };
    let max = attempt.max;
    let attempt = attempt.counted;
    match log {
        Log::Quiet => tracing::debug!(queue, task = id, reason = %error, "task deferred"),
        Log::AttemptFailed { next_at } => tracing::warn!(
            queue,
            task = id,
            attempt,
            max_attempts = max,
            error = %error,
            next_attempt_at = next_at,
            "queue task attempt {attempt}/{max} failed; retried from {next_at} (seconds since 1970)"
        ),
        Log::FailedForGood => tracing::error!(
            queue,
            task = id,
            attempt,
            max_attempts = max,
            error = %error,
            "queue task failed for good"
        ),
    }
}

/// Acquires a lease for the task and runs it there, or hands it back if the worker stops
/// first (or, once the stop gives up, while it runs).
async fn run<S: Send + 'static, T: Send + 'static>(
    shared: &Arc<Shared<S, T>>,
    (instance, id, attempt, run_at): (&str, &str, usize, Option<u64>),
    args: T,
    waiting: Count,
) -> Ran {
    let settings = &shared.settings;
    let mut acquire = shared
        .manager
        .acquire_owned()
        .owner(format!("queue:{}:{id}", shared.name))
        .timeout(settings.lease_wait);
    if let Some(d) = settings.lease_for {
        acquire = acquire.lease_for(d);
    }
    let give_up = shared.give_up.notified();
    tokio::pin!(give_up);
    give_up.as_mut().enable();
    let lease = if shared.phase.get() != Phase::Running {
        None
    } else {
        tokio::select! {
            lease = acquire => Some(lease),
            () = &mut give_up => None,
        }
    };
    let lease = match lease {
        None => return Ran::HandedBack,
        Some(Err(e)) => {
            tracing::debug!(task = id, error = %e, "no lease for a queue task: put back");
            let mut pause = shared.claim_pause.lock().unwrap_or_else(|e| e.into_inner());
            let step = (pause.1 * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
            *pause = (Instant::now().checked_add(step), step);
            return Ran::NoLease(e);
        }
        Some(Ok(lease)) => {
            *shared.claim_pause.lock().unwrap_or_else(|e| e.into_inner()) = (None, Duration::ZERO);
            drop(waiting);
            let metrics = &shared.counters.metrics;
            if metrics.enabled() {
                let now = std::time::SystemTime::now();
                metrics.started(super::metrics::task_wait(id, run_at, now));
            }
            lease
        }
    };
    if let Err(e) = shared
        .store
        .started(&shared.name, instance, id, attempt)
        .await
    {
        // Only a run that dies with its process would then go uncounted.
        tracing::debug!(queue = %shared.name, task = id, error = %e, "could not record a run's start");
    }
    let running = Count::up(&shared.counters.running);
    let job = (shared.run)(lease, args);
    tokio::pin!(job);
    // A stop that ran out of time hands running tasks back (their work may go on: at least
    // once).
    let finished = loop {
        let give_up = shared.give_up.notified();
        tokio::pin!(give_up);
        give_up.as_mut().enable();
        if shared.phase.get() == Phase::GivingUp {
            break None;
        }
        tokio::select! {
            r = &mut job => break Some(r),
            () = give_up => {}
        }
    };
    drop(running);
    match finished {
        None => Ran::HandedBack,
        Some(r) => Ran::Finished(r),
    }
}

/// `op` until it succeeds while the worker runs (pauses doubling from 50 ms to 1 s), or three
/// tries once it is stopping (the stop's deadline is near).
async fn persistently<S, T, F, Fut, R>(
    shared: &Shared<S, T>,
    mut op: F,
) -> Result<R, crate::queue::QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, crate::queue::QueueError>>,
{
    let mut pause = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match op().await {
            Ok(r) => return Ok(r),
            Err(e) if tries >= 2 && shared.phase.get() != Phase::Running => return Err(e),
            Err(e) => {
                tries += 1;
                if tries == 3 {
                    tracing::warn!(queue = %shared.name, error = %e, "the queue store fails; trying again");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// `op` until it succeeds, three tries 50 ms apart (a store call that a brief hiccup may fail).
async fn retried<F, Fut, R>(mut op: F) -> Result<R, crate::queue::QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, crate::queue::QueueError>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Ok(r) => return Ok(r),
            Err(e) if tries >= 2 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One unit of a gauge (`waiting`, `running`), given back when dropped: a task future that
/// is dropped (its apalis worker failed or was aborted) cannot leave the gauge high.
pub(super) struct Count(Arc<AtomicUsize>);

impl Count {
    fn up(gauge: &Arc<AtomicUsize>) -> Count {
        gauge.fetch_add(1, Ordering::SeqCst);
        Count(Arc::clone(gauge))
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct StrError(String);

impl std::fmt::Display for StrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StrError {}
