//! [`QueueWorkerBuilder`]: a worker's settings, each checked against its documented range.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::shared::{AtomicPhase, Counters, Phase, RunFn, Settings, Shared};
use super::QueueWorker;
use crate::queue::limits::{
    check_queue_name, DurationRange, LEASE_FOR, LEASE_WAIT, ORPHAN_TIMEOUT, POLL_INTERVAL,
    SHUTDOWN_TIMEOUT,
};
use crate::queue::trace::SpanHook;
use crate::queue::{Queue, QueueError, RetryPolicy};
use crate::LeaseManager;

impl<S: 'static> QueueWorker<S, ()> {
    /// Starts building a worker for the queue named `queue` of `store`, running its tasks on
    /// leases of `manager`.
    pub fn builder(manager: &LeaseManager<S>, store: &Queue, queue: &str) -> QueueWorkerBuilder<S> {
        QueueWorkerBuilder::new(manager, store, queue)
    }
}

/// Builds a [`QueueWorker`] ([`QueueWorker::builder`]).
pub struct QueueWorkerBuilder<S: 'static> {
    manager: LeaseManager<S>,
    queue: Queue,
    name: String,
    instance: Option<String>,
    settings: Settings,
    span_hook: Option<Arc<SpanHook>>,
    #[cfg(feature = "testing")]
    start_panics: usize,
}

impl<S: 'static> fmt::Debug for QueueWorkerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueWorkerBuilder")
            .field("queue", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

impl<S: 'static> QueueWorkerBuilder<S> {
    pub(super) fn new(manager: &LeaseManager<S>, queue: &Queue, name: &str) -> Self {
        QueueWorkerBuilder {
            manager: manager.clone(),
            queue: queue.clone(),
            name: name.to_string(),
            instance: None,
            settings: Settings {
                prefetch: 0,
                poll_interval: Duration::from_millis(100),
                orphan_timeout: Duration::from_secs(60),
                lease_wait: Duration::from_secs(30),
                lease_for: None,
                shutdown_timeout: Duration::from_secs(30),
                retry: RetryPolicy::default(),
                hold_deferrals: Duration::ZERO,
            },
            span_hook: None,
            #[cfg(feature = "testing")]
            start_panics: 0,
        }
    }

    /// A unique name for this worker in the queue (default: queue, host, pid and a counter).
    /// Two live workers must never share one.
    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// Tasks claimed beyond what the manager can start now (default 0, at most 1024): they
    /// wait for a lease here, invisible to other instances. A little prefetch hides the
    /// queue's round trip.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.settings.prefetch = n;
        self
    }

    /// How often an idle worker asks the queue for tasks (default 100 ms; 1 ms to 1 hour).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.settings.poll_interval = d;
        self
    }

    /// How long after this worker's last heartbeat the other workers re-run its tasks, if it
    /// died (default 60 s; 5 s to 1 day). It heartbeats every third of it; the store counts in
    /// whole seconds, so a dead worker's tasks run again between about `orphan_timeout / 3 +
    /// 1 s` short of the timeout and the timeout itself after its death.
    pub fn orphan_timeout(mut self, d: Duration) -> Self {
        self.settings.orphan_timeout = d;
        self
    }

    /// How long a claimed task waits for a lease before it is put back (default 30 s; more
    /// than zero; `Duration::MAX` waits as long as it takes).
    pub fn lease_wait(mut self, d: Duration) -> Self {
        self.settings.lease_wait = d;
        self
    }

    /// The lease length for each task (default: the manager's `default_lease`; more than
    /// zero). A task that outruns it plus the grace is revoked (`Expired`) and retried.
    pub fn lease_for(mut self, d: Duration) -> Self {
        self.settings.lease_for = Some(d);
        self
    }

    /// How long [`QueueWorker::stop`] lets running tasks finish before it hands them back
    /// (default 30 s; zero hands them back at once; `Duration::MAX` waits for them).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.settings.shutdown_timeout = d;
        self
    }

    /// How long a task whose attempt failed waits before its next one (default
    /// [`RetryPolicy::default`]: about 1 s doubling to 10 minutes, with jitter). A task pushed
    /// with its own policy ([`PushOptions::retry`](crate::queue::PushOptions::retry)) keeps it.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = policy;
        self
    }

    /// Called with each task's span (`queue_task`, target `leasepool::queue`, level INFO:
    /// fields `queue`, `task_id`, `traceparent`) and the `traceparent` its producer attached
    /// ([`PushOptions::trace_parent`](crate::queue::PushOptions::trace_parent)), before the
    /// task runs in it: the place to make the span a child of the producer's remote span — with
    /// `tracing-opentelemetry`, extract the context from the value and `span.set_parent(it)`.
    /// The task's job then runs in a `job` span under it, on a worker thread or in a child.
    pub fn on_task_span(
        mut self,
        hook: impl Fn(&tracing::Span, Option<&str>) + Send + Sync + 'static,
    ) -> Self {
        self.span_hook = Some(Arc::new(hook));
        self
    }

    /// Testing only (feature `testing`): deferred tasks are given back no sooner than `d`
    /// after their deferral, as if this worker lost the race to another worker or died first.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn hold_deferrals(mut self, d: Duration) -> Self {
        self.settings.hold_deferrals = d;
        self
    }

    /// Testing only (feature `testing`): the next `n` apalis workers this worker starts panic
    /// as they start (inside apalis' future), as a dependency's bug would.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn panic_on_start(mut self, n: usize) -> Self {
        self.start_panics = n;
        self
    }

    fn check(&self) -> Result<(), QueueError> {
        check_queue_name(&self.name)?;
        let s = &self.settings;
        let ranges: [(DurationRange, Option<Duration>); 5] = [
            (POLL_INTERVAL, Some(s.poll_interval)),
            (ORPHAN_TIMEOUT, Some(s.orphan_timeout)),
            (LEASE_WAIT, Some(s.lease_wait)),
            (LEASE_FOR, s.lease_for),
            (SHUTDOWN_TIMEOUT, Some(s.shutdown_timeout)),
        ];
        for (range, value) in ranges {
            if let Some(value) = value {
                range.check(value)?;
            }
        }
        s.retry.check()?;
        if s.prefetch > 1024 {
            return Err(QueueError::InvalidArgument(format!(
                "prefetch ({}) must be at most 1024",
                s.prefetch
            )));
        }
        if let Some(name) = &self.instance {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(QueueError::InvalidArgument(
                    "instance_name must be non-empty, without control characters".into(),
                ));
            }
        }
        Ok(())
    }

    fn finish<T>(self, run: Arc<RunFn<S, T>>) -> Result<QueueWorker<S, T>, QueueError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.check()?;
        let instance = self.instance.clone().unwrap_or_else(|| {
            format!(
                "{}@{}-{}-{}",
                self.name,
                hostname(),
                std::process::id(),
                INSTANCES.fetch_add(1, Ordering::Relaxed)
            )
        });
        let store = std::sync::Arc::clone(self.queue.store());
        let metrics = super::metrics::TaskMetrics::register(&self.name);
        Ok(QueueWorker {
            shared: Arc::new(Shared {
                manager: self.manager,
                queue: self.queue,
                store,
                name: self.name,
                base: instance.clone(),
                instance: Mutex::new(Arc::from(instance)),
                starts: AtomicU64::new(0),
                context: Mutex::new(None),
                last_error: Mutex::new(None),
                settings: self.settings,
                counters: Counters {
                    metrics,
                    ..Counters::default()
                },
                phase: AtomicPhase(std::sync::atomic::AtomicU8::new(Phase::Idle as u8)),
                freed: Notify::new(),
                run,
                unsettled: Mutex::new(Vec::new()),
                to_settle: Notify::new(),
                claim_pause: Mutex::new((None, Duration::ZERO)),
                give_up: Notify::new(),
                span_hook: self.span_hook,
                #[cfg(feature = "testing")]
                start_panics: std::sync::atomic::AtomicUsize::new(self.start_panics),
            }),
            running: Mutex::new(None),
        })
    }

    /// A worker whose tasks are closures' inputs: each task `T` runs `job(task)` on a worker
    /// thread of a lease (thread backend). `Err(e)` fails the attempt with `e`'s text.
    pub fn build_blocking<T, E, F>(self, job: F) -> Result<QueueWorker<S, T>, QueueError>
    where
        T: DeserializeOwned + Send + 'static,
        E: fmt::Display,
        F: Fn(T) -> Result<(), E> + Send + Sync + 'static,
    {
        let job = Arc::new(job);
        let run: Arc<RunFn<S, T>> = Arc::new(move |lease: crate::Lease<S>, task: T| {
            let job = Arc::clone(&job);
            Box::pin(async move {
                lease
                    .run(move || job(task).map_err(|e| e.to_string()))
                    .await
            })
        });
        self.finish(run)
    }

    /// A worker whose jobs use the worker thread's state (the manager's
    /// [`worker_state`](crate::ManagerBuilder::worker_state): a database connection per
    /// thread, say): each task `T` runs `job(&mut state, task)` with
    /// [`Lease::run_with`](crate::Lease::run_with). `Err(e)` fails the attempt with `e`'s text.
    pub fn build_with<T, E, F>(self, job: F) -> Result<QueueWorker<S, T>, QueueError>
    where
        S: Send,
        T: DeserializeOwned + Send + 'static,
        E: fmt::Display,
        F: Fn(&mut S, T) -> Result<(), E> + Send + Sync + 'static,
    {
        let job = Arc::new(job);
        let run: Arc<RunFn<S, T>> = Arc::new(move |lease: crate::Lease<S>, task: T| {
            let job = Arc::clone(&job);
            Box::pin(async move {
                lease
                    .run_with(move |state: &mut S| job(state, task).map_err(|e| e.to_string()))
                    .await
            })
        });
        self.finish(run)
    }

    /// A worker whose tasks are [`ProcessJob`](crate::process::ProcessJob)s: each task runs
    /// with [`Lease::call`](crate::Lease::call) (a worker child on the process backend, a
    /// worker thread on the thread backend). Its output is dropped. Feature `process` too.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn build_calls<J>(self) -> Result<QueueWorker<S, J>, QueueError>
    where
        J: crate::process::ProcessJob + Sync + Unpin,
    {
        let run: Arc<RunFn<S, J>> = Arc::new(move |lease: crate::Lease<S>, job: J| {
            Box::pin(async move { lease.call(job).await.map(|_| Ok(())) })
        });
        self.finish(run)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
