//! The Redis store: apalis-redis' keys (named by its `Config`), plus what apalis 1.0 does not
//! do (see the [`Store`] methods), each one Lua script (`scripts.rs`) so that it is atomic
//! against the workers' own scripts. Standalone Redis: the scripts read keys they compute (the
//! workers' in-flight sets, task meta hashes), which Redis Cluster does not allow.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use ::redis::Script;
use apalis_core::backend::ext::BackendExt as _;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::MetadataStore;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use apalis_redis::{Config, RedisStorage};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, SinkExt as _};

use super::{run_apalis, unix_now, Intent, NewTask, Quarantined, RunSpec, Settled, Store};
use crate::queue::{QueueCounts, QueueError, TaskInfo};

pub(crate) mod judge;
mod scripts;

/// Tasks pushed in one script.
const PUSH_CHUNK: usize = 1000;
/// Due tasks moved per script run before a fetch.
const PROMOTE_DUE_CHUNK: usize = 1000;
/// How often a fetching worker moves due tasks over (at most).
const PROMOTE_EVERY: Duration = Duration::from_millis(200);
/// Settling members swept per run.
const SWEEP_LIMIT: usize = 500;

pub(crate) struct RedisStore {
    conn: ConnectionManager,
    url: String,
    /// When each queue's due tasks were last moved over (see `before_fetch`).
    promoted: Arc<Mutex<HashMap<String, Instant>>>,
}

impl RedisStore {
    pub(crate) async fn connect(url: &str) -> Result<RedisStore, QueueError> {
        let conn = apalis_redis::connect(url)
            .await
            .map_err(|e| QueueError::Store(format!("connecting to {}: {e}", redact(url))))?;
        Ok(RedisStore {
            conn,
            url: url.to_owned(),
            promoted: Arc::default(),
        })
    }
}

/// `url` without its password, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn config(queue: &str) -> Config {
    Config::default().queue(queue)
}

fn inflight_set(queue: &str, worker: &str) -> String {
    config(queue).inflight_set_for(&WorkerContext::new(worker))
}

fn meta_hash(queue: &str, id: &str) -> String {
    format!("{}:{id}", config(queue).job_meta_hash())
}

fn settling_set(queue: &str) -> String {
    format!("{queue}:leasepool_settling")
}

/// A script's answer to "set right": 1 done, 0 not yet, 2 moved on.
fn settled(answer: i64) -> Settled {
    match answer {
        1 => Settled::Done,
        0 => Settled::NotYet,
        _ => Settled::Gone,
    }
}

async fn promote(conn: &ConnectionManager, queue: &str, ids: &[String]) -> Result<(), QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    let script = Script::new(scripts::PROMOTE);
    let mut call = script.prepare_invoke();
    call.key(cfg.scheduled_jobs_set())
        .key(cfg.active_jobs_list())
        .key(cfg.signal_list());
    for id in ids {
        call.arg(id);
    }
    let _: i64 = call.invoke_async(&mut conn).await?;
    Ok(())
}

async fn promote_due(conn: &ConnectionManager, queue: &str) -> Result<(), QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    let script = Script::new(scripts::PROMOTE_DUE);
    // Until a run moves less than a whole chunk.
    loop {
        let moved: usize = script
            .key(cfg.scheduled_jobs_set())
            .key(cfg.active_jobs_list())
            .key(cfg.signal_list())
            .arg(unix_now())
            .arg(PROMOTE_DUE_CHUNK)
            .invoke_async(&mut conn)
            .await?;
        if moved < PROMOTE_DUE_CHUNK {
            return Ok(());
        }
    }
}

impl RedisStore {
    async fn push_chunks(&self, queue: &str, tasks: Vec<NewTask>) -> Result<(), QueueError> {
        let n = tasks.len();
        let mut storage =
            RedisStorage::<Vec<u8>>::new(self.conn.clone()).with_config(config(queue));
        let mut tasks = tasks.into_iter().peekable();
        let mut queued = 0;
        while tasks.peek().is_some() {
            let chunk: Vec<NewTask> = tasks.by_ref().take(PUSH_CHUNK).collect();
            let ids: Vec<String> = chunk.iter().map(|t| t.id.clone()).collect();
            let mut stream = futures_util::stream::iter(chunk.into_iter().map(|t| {
                Ok(TaskBuilder::new(t.payload)
                    .task_id(TaskId::from_string(t.id))
                    .max_attempts(t.max_attempts as usize)
                    .with_metadata(MetadataStore::from_map(t.metadata.into_iter().collect()))
                    .build())
            }));
            storage.send_all(&mut stream).await.map_err(|e| {
                QueueError::Store(if queued == 0 {
                    e.to_string()
                } else {
                    format!("{e} (after {queued} of {n} tasks were queued)")
                })
            })?;
            queued += ids.len();
            // Pushed: durable and due now. Moving them to the active list only spares the
            // fetch a backlog (any worker moves due tasks), so a failure here is no failure of
            // the push: a caller that retried would run the tasks twice.
            if let Err(e) = promote(&self.conn, queue, &ids).await {
                tracing::debug!(queue, error = %e, "moving pushed tasks to the active list failed; the workers will");
            }
        }
        Ok(())
    }

    async fn read_task(&self, queue: &str, id: &str) -> Result<Option<TaskInfo>, QueueError> {
        let cfg = config(queue);
        let mut conn = self.conn.clone();
        type Read = (HashMap<String, String>, Vec<String>, String, u8);
        let read: Option<Read> = Script::new(scripts::TASK)
            .key(meta_hash(queue, id))
            .key(cfg.workers_set())
            .key(cfg.scheduled_jobs_set())
            .key(cfg.dead_jobs_set())
            .key(settling_set(queue))
            .arg(cfg.inflight_jobs_set())
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        let Some((meta, holder, at, reviving)) = read else {
            return Ok(None);
        };
        let locked_by = holder.into_iter().next();
        let number = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let at = at
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0);
        let mut status = meta.get("status").cloned().unwrap_or_default();
        if locked_by.is_some() {
            status = "Running".into();
        } else if reviving == 1 {
            // In the dead set only until its worker moves it to its retry time.
            status = "Scheduled".into();
        } else if status == "Running" {
            // Handed back, or re-enqueued as an orphan: waiting for anyone.
            status = "Pending".into();
        } else if at.is_some() {
            // Waiting for its retry time (or for its worker to give a deferral back).
            status = "Scheduled".into();
        }
        let next_attempt_at = at
            .map(|t| t.ceil() as u64)
            .filter(|t| *t > unix_now())
            .map(|t| std::time::UNIX_EPOCH + Duration::from_secs(t));
        let stored = number("attempts");
        Ok(Some(TaskInfo {
            status,
            attempts: stored.saturating_sub(judge::owed(&meta, stored).0),
            max_attempts: number("max_attempts"),
            locked_by,
            last_result: meta.get("result").cloned(),
            next_attempt_at,
        }))
    }

    async fn marks(
        &self,
        queue: &str,
        worker: &str,
        id: &str,
        set: bool,
        fields: &[String],
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let held: i64 = Script::new(scripts::MARKS)
            .key(inflight_set(queue, worker))
            .key(meta_hash(queue, id))
            .arg(id)
            .arg(u8::from(set))
            .arg(fields)
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    async fn settle_one(
        &self,
        queue: &str,
        worker: &str,
        id: &str,
        intent: &Intent,
    ) -> Result<Settled, QueueError> {
        let cfg = config(queue);
        let mut conn = self.conn.clone();
        let member = judge::settling_member(id, intent);
        let answer: i64 = match intent {
            Intent::GiveBack { attempt } => {
                Script::new(scripts::SETTLE_GIVE_BACK)
                    .key(cfg.scheduled_jobs_set())
                    .key(cfg.active_jobs_list())
                    .key(meta_hash(queue, id))
                    .key(cfg.signal_list())
                    .key(cfg.dead_jobs_set())
                    .key(settling_set(queue))
                    .key(inflight_set(queue, worker))
                    .arg(id)
                    .arg(attempt)
                    .arg(format!("{}{attempt}", judge::OWED))
                    .arg(member)
                    .invoke_async(&mut conn)
                    .await?
            }
            Intent::RetryAt { attempt, at } => {
                Script::new(scripts::SETTLE_RETRY)
                    .key(cfg.scheduled_jobs_set())
                    .key(meta_hash(queue, id))
                    .key(cfg.dead_jobs_set())
                    .key(settling_set(queue))
                    .key(inflight_set(queue, worker))
                    .arg(id)
                    .arg(attempt)
                    .arg(at)
                    .arg(member)
                    .invoke_async(&mut conn)
                    .await?
            }
        };
        Ok(settled(answer))
    }

    async fn quarantine_claimed(
        &self,
        queue: &str,
        worker: &str,
    ) -> Result<Quarantined, QueueError> {
        let cfg = config(queue);
        let mut conn = self.conn.clone();
        let claimed: Vec<(Vec<u8>, Vec<Vec<u8>>, i64)> = Script::new(scripts::CLAIMED)
            .key(inflight_set(queue, worker))
            .key(cfg.job_data_hash())
            .arg(cfg.job_meta_hash())
            .invoke_async(&mut conn)
            .await?;
        let mut found = Quarantined::default();
        for (id, meta, has_payload) in claimed {
            let Err(why) = judge::unreadable(&id, &meta, has_payload == 1) else {
                found.readable += 1;
                continue;
            };
            let why = format!("apalis cannot read this task: {why}");
            let result = serde_json::json!({ "Err": why }).to_string();
            let shown = String::from_utf8_lossy(&id).into_owned();
            let _: i64 = Script::new(scripts::KILL)
                .key(inflight_set(queue, worker))
                .key(cfg.dead_jobs_set())
                .key(format!("{}:{shown}", cfg.job_meta_hash()))
                .arg(&id)
                .arg(result)
                .arg(unix_now())
                .invoke_async(&mut conn)
                .await?;
            found.killed.push((shown, why));
        }
        Ok(found)
    }
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        format!("redis {}", redact(&self.url))
    }

    fn path(&self) -> Option<&Path> {
        None
    }

    fn push<'a>(
        &'a self,
        queue: &'a str,
        tasks: Vec<NewTask>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.push_chunks(queue, tasks).boxed()
    }

    fn counts<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueCounts, QueueError>> {
        async move {
            let cfg = config(queue);
            let mut conn = self.conn.clone();
            let (pending, claimed, done, failed): (u64, u64, u64, u64) =
                Script::new(scripts::COUNTS)
                    .key(cfg.active_jobs_list())
                    .key(cfg.scheduled_jobs_set())
                    .key(cfg.done_jobs_set())
                    .key(cfg.dead_jobs_set())
                    .key(cfg.workers_set())
                    .key(settling_set(queue))
                    .arg(cfg.inflight_jobs_set())
                    .arg(cfg.job_meta_hash())
                    .invoke_async(&mut conn)
                    .await?;
            Ok(QueueCounts {
                pending,
                claimed,
                done,
                failed,
            })
        }
        .boxed()
    }

    fn task<'a>(
        &'a self,
        queue: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TaskInfo>, QueueError>> {
        self.read_task(queue, id).boxed()
    }

    fn run(self: Arc<Self>, spec: RunSpec) -> BoxFuture<'static, Result<(), String>> {
        let config = config(&spec.queue)
            .batch_size(1)
            .heartbeat_interval(spec.heartbeat)
            .missed_heartbeats(3);
        let backend = RedisStorage::<Vec<u8>>::new(self.conn.clone())
            .with_config(config)
            .poll_with_interval(spec.poll_interval);
        run_apalis(backend, self, spec).boxed()
    }

    fn counted_attempt<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        attempt: usize,
        metadata: &'a HashMap<String, String>,
    ) -> BoxFuture<'a, Result<usize, QueueError>> {
        async move {
            // apalis counted this run before the worker saw it: `attempt - 1` is what the task
            // was fetched with. Deferrals that another worker could not give back are owed.
            let fetched = attempt.saturating_sub(1) as u64;
            let (owed, stale) = judge::owed(metadata, fetched);
            // Stale marks go before the task runs (its acknowledgement would make them count).
            if !stale.is_empty() {
                self.marks(queue, worker, id, false, &stale).await?;
            }
            Ok(attempt.saturating_sub(owed as usize))
        }
        .boxed()
    }

    fn prepare<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>> {
        async move {
            let mark = match intent {
                Intent::GiveBack { attempt } => format!("{}{attempt}", judge::OWED),
                Intent::RetryAt { .. } => String::new(),
            };
            let mut conn = self.conn.clone();
            let held: i64 = Script::new(scripts::PREPARE)
                .key(inflight_set(queue, worker))
                .key(meta_hash(queue, id))
                .key(settling_set(queue))
                .arg(id)
                .arg(judge::settling_member(id, intent))
                .arg(unix_now())
                .arg(mark)
                .invoke_async(&mut conn)
                .await?;
            // Not ours any more (re-enqueued as an orphan): its acknowledgement cannot land.
            Ok(if held == 1 {
                Settled::NotYet
            } else {
                Settled::Gone
            })
        }
        .boxed()
    }

    fn settle<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>> {
        self.settle_one(queue, worker, id, intent).boxed()
    }

    fn release_worker<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        unsettled: &'a [(String, Intent)],
    ) -> BoxFuture<'a, Result<u64, QueueError>> {
        async move {
            // Claimed tasks first: once they left the worker's in-flight set, a late
            // acknowledgement of one fails instead of scheduling it. Then the intents whose
            // acknowledgement landed before.
            let cfg = config(queue);
            let mut conn = self.conn.clone();
            let mut n: u64 = Script::new(scripts::RELEASE_WORKER)
                .key(inflight_set(queue, worker))
                .key(cfg.active_jobs_list())
                .key(cfg.workers_set())
                .key(cfg.signal_list())
                .arg(worker)
                .arg(cfg.job_meta_hash())
                .invoke_async(&mut conn)
                .await?;
            for (id, intent) in unsettled {
                if self.settle_one(queue, worker, id, intent).await? == Settled::Done
                    && matches!(intent, Intent::GiveBack { .. })
                {
                    n += 1;
                }
            }
            Ok(n)
        }
        .boxed()
    }

    fn sweep<'a>(
        &'a self,
        queue: &'a str,
        orphan_timeout: Duration,
    ) -> BoxFuture<'a, Result<u64, QueueError>> {
        async move {
            let cfg = config(queue);
            let mut conn = self.conn.clone();
            let now = unix_now();
            let timeout = orphan_timeout.as_secs();
            let fixed: u64 = Script::new(scripts::SWEEP_SETTLING)
                .key(settling_set(queue))
                .key(cfg.scheduled_jobs_set())
                .key(cfg.active_jobs_list())
                .key(cfg.dead_jobs_set())
                .key(cfg.signal_list())
                .arg(now.saturating_sub(timeout))
                .arg(now)
                .arg(cfg.job_meta_hash())
                .arg(SWEEP_LIMIT)
                .arg(now.saturating_sub(timeout.saturating_mul(10)))
                .invoke_async(&mut conn)
                .await?;
            if fixed > 0 {
                tracing::info!(
                    queue,
                    tasks = fixed,
                    "set right what workers that died left unsettled"
                );
            }
            Ok(fixed)
        }
        .boxed()
    }

    fn quarantine<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
    ) -> BoxFuture<'a, Result<Quarantined, QueueError>> {
        self.quarantine_claimed(queue, worker).boxed()
    }

    fn check_identity(&self) -> Result<(), String> {
        Ok(())
    }

    fn before_fetch(&self, queue: &str) -> Option<BoxFuture<'static, ()>> {
        {
            let mut last = self.promoted.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match last.get(queue) {
                Some(at) if now.duration_since(*at) < PROMOTE_EVERY => return None,
                _ => {
                    last.insert(queue.to_owned(), now);
                }
            }
        }
        let (conn, queue) = (self.conn.clone(), queue.to_owned());
        Some(
            async move {
                if let Err(e) = promote_due(&conn, &queue).await {
                    tracing::debug!(error = %e, "moving due tasks to the active list failed");
                }
            }
            .boxed(),
        )
    }

    fn reopen(&self) -> BoxFuture<'_, Result<bool, QueueError>> {
        async { Ok(false) }.boxed()
    }
}
