//! The Redis store's operations: each one Lua script (see `scripts.rs`), called with the keys
//! apalis' `Config` names.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::Script;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::MetadataStore;
use apalis_core::task::task_id::TaskId;
use apalis_redis::RedisStorage;
use futures_util::SinkExt as _;

use super::keys::{config, inflight_set, meta_hash, settling_set};
use super::{judge, scripts, RedisStore};
use crate::queue::store::{unix_now, Intent, NewTask, Settled};
use crate::queue::{QueueCounts, QueueError, TaskInfo};

/// Tasks pushed in one script.
const PUSH_CHUNK: usize = 1000;
/// Settling members swept per run.
const SWEEP_LIMIT: usize = 500;

/// A script's answer to "set right": 1 done, 0 not yet, 2 moved on.
fn settled(answer: i64) -> Settled {
    match answer {
        1 => Settled::Done,
        0 => Settled::NotYet,
        _ => Settled::Gone,
    }
}

pub(super) async fn promote(
    conn: &ConnectionManager,
    queue: &str,
    ids: &[String],
) -> Result<(), QueueError> {
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

impl RedisStore {
    pub(super) async fn push_chunks(
        &self,
        queue: &str,
        tasks: Vec<NewTask>,
    ) -> Result<(), QueueError> {
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

    pub(super) async fn read_task(
        &self,
        queue: &str,
        id: &str,
    ) -> Result<Option<TaskInfo>, QueueError> {
        let cfg = config(queue);
        let mut conn = self.conn.clone();
        // Meta fields as bytes: another producer may have written any.
        type Read = (Vec<(Vec<u8>, Vec<u8>)>, Vec<String>, String, u8);
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
        let meta: HashMap<String, String> = meta
            .into_iter()
            .map(|(k, v)| {
                let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
                (text(k), text(v))
            })
            .collect();
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

    pub(super) async fn marks(
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

    pub(super) async fn settle_one(
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

    pub(super) async fn counts(&self, queue: &str) -> Result<QueueCounts, QueueError> {
        let cfg = config(queue);
        let mut conn = self.conn.clone();
        let (pending, claimed, done, failed): (u64, u64, u64, u64) = Script::new(scripts::COUNTS)
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

    pub(super) async fn counted_attempt(
        &self,
        queue: &str,
        worker: &str,
        id: &str,
        attempt: usize,
        metadata: &HashMap<String, String>,
    ) -> Result<usize, QueueError> {
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

    pub(super) async fn prepare(
        &self,
        queue: &str,
        worker: &str,
        id: &str,
        intent: &Intent,
    ) -> Result<Settled, QueueError> {
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

    pub(super) async fn release_worker(
        &self,
        queue: &str,
        worker: &str,
        unsettled: &[(String, Intent)],
    ) -> Result<u64, QueueError> {
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

    pub(super) async fn sweep(
        &self,
        queue: &str,
        orphan_timeout: Duration,
    ) -> Result<u64, QueueError> {
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

    pub(super) async fn started(
        &self,
        queue: &str,
        worker: &str,
        id: &str,
        attempt: usize,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(scripts::STARTED)
            .key(inflight_set(queue, worker))
            .key(meta_hash(queue, id))
            .arg(id)
            .arg(attempt)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
