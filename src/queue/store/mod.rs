//! The seam between the queue's generic code and a store: one trait, [`Store`], that says what
//! a store does for us, one module per store that implements it (`sqlite/`, `redis/`,
//! `postgres/`), the apalis plumbing they share (`apalis.rs`: `run_apalis`, the `Raw` backend
//! wrapper), and the SQL stores' backend (`shield.rs`: one [`shield::Dialect`] per SQL store).
//!
//! The worker and the producer API call only this trait; nothing above this module knows
//! which store it has.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::error::BoxDynError;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::MetadataStore;
use apalis_core::task::task_id::TaskId;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use apalis_core::worker::event::Event;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;

use super::{QueueCounts, QueueError, TaskInfo};

pub(super) mod apalis;
pub(crate) mod postgres;
pub(crate) mod redis;
pub(crate) mod shield;
pub(crate) mod sqlite;

/// A task about to be pushed: its payload already encoded and checked.
#[derive(Debug, Clone)]
pub(crate) struct NewTask {
    pub(crate) id: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) max_attempts: u32,
    /// Fields stored with the task (apalis' task metadata), e.g. a retry policy.
    pub(crate) metadata: Vec<(String, String)>,
}

impl NewTask {
    /// As apalis pushes it.
    pub(crate) fn into_apalis(self) -> Task<Vec<u8>> {
        TaskBuilder::new(self.payload)
            .task_id(TaskId::from_string(self.id))
            .max_attempts(self.max_attempts as usize)
            .with_metadata(MetadataStore::from_map(self.metadata.into_iter().collect()))
            .build()
    }
}

/// The metadata key of a task's own retry policy ([`RetryPolicy::to_meta`]).
///
/// [`RetryPolicy::to_meta`]: super::RetryPolicy
pub(crate) const RETRY_META: &str = "leasepool_retry";

/// What the worker needs done to a task around apalis' acknowledgement of an attempt: first
/// [`Store::prepare`] (before the acknowledgement), then [`Store::settle`] until it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intent {
    /// A deferral (put back, handed back): apalis counts the attempt; give it back and make
    /// the task available at once.
    GiveBack { attempt: usize },
    /// A failed attempt to run again no sooner than `at` (seconds since 1970).
    RetryAt { attempt: usize, at: u64 },
}

/// How a [`Store::settle`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Done: nothing more to do.
    Done,
    /// apalis' acknowledgement has not reached the store yet: try again later.
    NotYet,
    /// The task moved on (run elsewhere, finished, handed back): nothing to do, ever.
    Gone,
}

/// Told of each stored task a store failed for good because apalis cannot read it: (task id,
/// why). Such a task never reaches the worker's service; the store takes it out of the fetch.
pub(crate) type OnUnreadable = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The service a store's apalis worker runs: the queue worker's, type-erased.
pub(crate) type TaskFuture = BoxFuture<'static, Result<(), BoxDynError>>;

pub(crate) trait TaskService: Send + 'static {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>>;
    fn call(&mut self, task: Task<Vec<u8>>) -> TaskFuture;
}

pub(crate) struct DynService(pub(crate) Box<dyn TaskService>);

impl tower_service::Service<Task<Vec<u8>>> for DynService {
    type Response = ();
    type Error = BoxDynError;
    type Future = TaskFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, task: Task<Vec<u8>>) -> TaskFuture {
        self.0.call(task)
    }
}

/// Told of each apalis worker event.
pub(crate) type OnEvent = Box<dyn Fn(&WorkerContext, &Event) + Send + Sync>;

/// What one run of an apalis worker needs.
pub(crate) struct RunSpec {
    pub(crate) queue: String,
    pub(crate) context: WorkerContext,
    pub(crate) heartbeat: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) on_event: OnEvent,
    /// Told of each claimed task the shield failed for good: (task id, why).
    pub(crate) on_unreadable: OnUnreadable,
    pub(crate) service: DynService,
}

/// What a store does for the queue. Every method that touches the store is one atomic step
/// (a statement, a transaction or a Lua script), so that it cannot interleave with apalis' own.
pub(crate) trait Store: Send + Sync + 'static {
    /// For `Debug` and logs (a Redis URL without its password).
    fn describe(&self) -> String;

    /// The SQLite file (`None` for a server).
    fn path(&self) -> Option<&Path> {
        None
    }

    /// Pushes tasks, all or none where the store can (SQLite); on Redis in chunks, an error
    /// after the first chunk saying how many were queued.
    fn push<'a>(
        &'a self,
        queue: &'a str,
        tasks: Vec<NewTask>,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// One snapshot of the queue's counts.
    fn counts<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueCounts, QueueError>>;

    /// One task of `queue`, read in one step.
    fn task<'a>(
        &'a self,
        queue: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TaskInfo>, QueueError>>;

    /// Runs an apalis worker on this store until it stops or fails. A stored task that apalis
    /// cannot read is failed for good with its reason ([`RunSpec::on_unreadable`]) and fetched
    /// past: it never stops the worker. A fetch on a store that is not the one the worker's
    /// connections hold any more (a SQLite file deleted or replaced) fails the worker.
    fn run(self: Arc<Self>, spec: RunSpec) -> BoxFuture<'static, Result<(), String>>;

    /// The attempt number of task `id` that `worker` just fetched at apalis' count `attempt`,
    /// once the store set right what it must before the task runs (Redis: apalis' count
    /// includes attempts owed back; stale owed marks are deleted). `Err`: the task must not run
    /// now (the worker puts it back).
    fn counted_attempt<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        attempt: usize,
        metadata: &'a HashMap<String, String>,
    ) -> BoxFuture<'a, Result<usize, QueueError>> {
        // A store that owes nothing back: apalis' count is the count.
        let _ = (queue, worker, id, metadata);
        async move { Ok(attempt) }.boxed()
    }

    /// `worker` starts running task `id` at apalis' count `attempt` (it has its lease): a run
    /// that never gets acknowledged (its process dies) must still count. SQLite needs nothing
    /// (apalis' orphan re-run there counts an attempt); Redis records the count now (its orphan
    /// re-run does not count one: a job that kills its process would run forever).
    fn started<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        attempt: usize,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        // A store whose orphan re-run counts the attempt of a run that never answered.
        let _ = (queue, worker, id, attempt);
        async { Ok(()) }.boxed()
    }

    /// Before apalis acknowledges `worker`'s attempt of task `id`, for `intent`: `Done` if
    /// nothing is left for [`settle`](Self::settle) to do, `NotYet` if it must follow the
    /// acknowledgement, `Gone` if the task is no longer the worker's.
    fn prepare<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>>;

    /// After the acknowledgement: carries `intent` out if the task is still where the
    /// acknowledgement left it.
    fn settle<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>>;

    /// After `worker` stopped for good: every task it still holds goes back to the queue
    /// without counting an attempt; `unsettled` lists its intents not settled yet.
    fn release_worker<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        unsettled: &'a [(String, Intent)],
    ) -> BoxFuture<'a, Result<u64, QueueError>>;

    /// Housekeeping every worker does now and then: what dead workers left unsettled, the
    /// planner's statistics. Returns how many tasks it set right.
    fn sweep<'a>(
        &'a self,
        queue: &'a str,
        orphan_timeout: Duration,
    ) -> BoxFuture<'a, Result<u64, QueueError>>;

    /// If the store under the path is not the one the connections hold (a SQLite file deleted
    /// or replaced): new connections to what the path names now, all at once. Whether it did.
    fn reopen(&self) -> BoxFuture<'_, Result<bool, QueueError>> {
        async { Ok(false) }.boxed()
    }
}

/// Now, in seconds since 1970 (the stores' clock).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
