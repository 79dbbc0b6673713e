//! The Redis store: apalis-redis' keys (`{queue}:active`, `:scheduled`, `:inflight:{worker}`,
//! `:meta:{id}`, …, named by its `Config`), plus the two things apalis 1.0 does not do (giving
//! back a deferred task's attempt, handing a stopped worker's tasks back), each one Lua script
//! so that it is atomic against the workers' own scripts.

use ::redis::aio::ConnectionManager;
use ::redis::Script;
use apalis_core::worker::context::WorkerContext;
use apalis_redis::Config;

use super::{Deferral, QueueCounts, QueueError, TaskInfo};

/// The prefix of the fields of a task's meta hash that mark attempts it is owed:
/// `leasepool_owed:<a>` is a deferral (put-back, hand-back) acknowledged at attempt `a` whose
/// worker has not given the attempt back — another worker took the task from the schedule
/// first. A mark counts once the stored attempts reached `a` (the acknowledgement landed); one
/// above them is from an acknowledgement that never landed and is stale for good (the task left
/// its worker's in-flight set), so the next worker to fetch the task deletes it. apalis hands
/// every unknown meta field to the task's metadata, so a fetched task carries its marks.
pub(super) const OWED: &str = "leasepool_owed:";

/// The attempts `fields` (a task's meta data) owe at `stored` attempts, and the stale marks.
pub(super) fn owed<'a>(
    fields: impl IntoIterator<Item = (&'a String, &'a String)>,
    stored: u64,
) -> (u64, Vec<String>) {
    let mut owed = 0;
    let mut stale = Vec::new();
    for (field, _) in fields {
        if let Some(at) = field.strip_prefix(OWED) {
            match at.parse::<u64>() {
                Ok(at) if at <= stored => owed += 1,
                _ => stale.push(field.clone()),
            }
        }
    }
    (owed, stale)
}

/// Sets (`ARGV[2]` = 1) or deletes (0) owed marks of a task, only while the task is in the
/// calling worker's in-flight set: once it left (re-enqueued as an orphan, handed back), its
/// acknowledgement cannot land and another worker may already run it, so the worker's view of
/// the marks is out of date and it changes nothing.
const MARKS: &str = r"
-- KEYS: the worker's in-flight set, the task's meta hash; ARGV: task id, 1 set / 0 delete,
-- the mark fields
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
for i = 3, #ARGV do
  if ARGV[2] == '1' then
    redis.call('HSET', KEYS[2], ARGV[i], 1)
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 1
";

/// Sets or deletes owed marks of task `id` held by `worker` (see [`MARKS`]); whether the
/// worker still held it.
async fn marks(
    conn: &ConnectionManager,
    queue: &str,
    worker: &str,
    id: &str,
    set: bool,
    fields: &[String],
) -> Result<bool, QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    let held: i64 = Script::new(MARKS)
        .key(inflight_set(queue, worker))
        .key(format!("{}:{id}", cfg.job_meta_hash()))
        .arg(id)
        .arg(u8::from(set))
        .arg(fields)
        .invoke_async(&mut conn)
        .await
        .map_err(store_error)?;
    Ok(held == 1)
}

/// Deletes stale owed marks of a task (see [`OWED`]) before `worker` runs it.
pub(super) async fn drop_marks(
    conn: &ConnectionManager,
    queue: &str,
    worker: &str,
    id: &str,
    stale: &[String],
) -> Result<bool, QueueError> {
    marks(conn, queue, worker, id, false, stale).await
}

fn store_error(e: ::redis::RedisError) -> QueueError {
    QueueError::Store(e.to_string())
}

/// `url` without its password, for logs and errors.
pub(super) fn redact(url: &str) -> String {
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

/// Every count in one script, so that a task moving between two of apalis' keys (its own
/// moves are scripts too) is counted once: read key by key, a task acknowledged for a retry
/// between reading the schedule and the in-flight sets was in neither.
const COUNTS: &str = r"
-- KEYS: active list, scheduled set, done set, dead set, workers set; ARGV: in-flight set prefix
local claimed = 0
for _, w in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  claimed = claimed + redis.call('SCARD', ARGV[1] .. ':' .. w)
end
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('SCARD', KEYS[3]),
  redis.call('SCARD', KEYS[4]), claimed}
";

pub(super) async fn counts(
    conn: &ConnectionManager,
    queue: &str,
) -> Result<QueueCounts, QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    let (active, scheduled, done, dead, claimed): (u64, u64, u64, u64, u64) = Script::new(COUNTS)
        .key(cfg.active_jobs_list())
        .key(cfg.scheduled_jobs_set())
        .key(cfg.done_jobs_set())
        .key(cfg.dead_jobs_set())
        .key(cfg.workers_set())
        .arg(cfg.inflight_jobs_set())
        .invoke_async(&mut conn)
        .await
        .map_err(store_error)?;
    Ok(QueueCounts {
        pending: active + scheduled,
        claimed,
        done,
        failed: dead,
    })
}

/// A task's meta data, the worker holding it and whether it is scheduled, read in one script
/// (for the same reason as [`COUNTS`]).
const TASK: &str = r"
-- KEYS: the task's meta hash, workers set, scheduled set; ARGV: in-flight set prefix, task id
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then
  return nil
end
local holder = {}
for _, w in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('SISMEMBER', ARGV[1] .. ':' .. w, ARGV[2]) == 1 then
    holder = {w}
    break
  end
end
local scheduled = 0
if redis.call('ZSCORE', KEYS[3], ARGV[2]) then
  scheduled = 1
end
return {meta, holder, scheduled}
";

pub(super) async fn task(
    conn: &ConnectionManager,
    queue: &str,
    id: &str,
) -> Result<Option<TaskInfo>, QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    type Read = (std::collections::HashMap<String, String>, Vec<String>, u8);
    let read: Option<Read> = Script::new(TASK)
        .key(format!("{}:{id}", cfg.job_meta_hash()))
        .key(cfg.workers_set())
        .key(cfg.scheduled_jobs_set())
        .arg(cfg.inflight_jobs_set())
        .arg(id)
        .invoke_async(&mut conn)
        .await
        .map_err(store_error)?;
    let Some((meta, holder, scheduled)) = read else {
        return Ok(None);
    };
    let locked_by = holder.into_iter().next();
    let scheduled = scheduled == 1;
    let number = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut status = meta.get("status").cloned().unwrap_or_default();
    if locked_by.is_some() {
        status = "Running".into();
    } else if status == "Running" {
        // Handed back, or re-enqueued as an orphan: waiting for anyone.
        status = "Pending".into();
    } else if scheduled {
        // Waiting for its retry time (or for its worker to give a deferral back).
        status = "Scheduled".into();
    }
    Ok(Some(TaskInfo {
        status,
        attempts: {
            let stored = number("attempts");
            stored.saturating_sub(owed(&meta, stored).0)
        },
        max_attempts: number("max_attempts"),
        locked_by,
        last_result: meta.get("result").cloned(),
    }))
}

/// Tasks pushed in one script.
pub(super) const PUSH_CHUNK: usize = 1000;

/// apalis-redis 1.0 puts every new task in its schedule (due at once) and its fetch script moves
/// all due tasks to the active list with one Lua `unpack`, which fails beyond about 8 000: one
/// large push would stop every worker of the queue for good. Our pushes move their own tasks
/// to the active list straight away, one by one.
const PROMOTE: &str = r"
-- KEYS: scheduled set, active list, signal list; ARGV: task ids
local moved = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
return moved
";

pub(super) async fn promote(
    conn: &ConnectionManager,
    queue: &str,
    ids: &[String],
) -> Result<(), QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    let promote = Script::new(PROMOTE);
    let mut script = promote.prepare_invoke();
    script
        .key(cfg.scheduled_jobs_set())
        .key(cfg.active_jobs_list())
        .key(cfg.signal_list());
    for id in ids {
        script.arg(id);
    }
    let _: i64 = script.invoke_async(&mut conn).await.map_err(store_error)?;
    Ok(())
}

/// Due tasks moved per script run by `promote_due`.
const PROMOTE_DUE_CHUNK: usize = 1000;

/// The same limit bites when more than ~8 000 scheduled tasks come due at once: retries of a
/// burst of failures, or a large push by a producer that does not go through `Queue`. Every
/// worker moves due tasks to the active list in chunks a few times a second, so the backlog
/// apalis' fetch sees stays small.
const PROMOTE_DUE: &str = r"
-- KEYS: scheduled set, active list, signal list; ARGV: now (seconds), limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('RPUSH', KEYS[2], due[i])
end
if #due > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
return #due
";

pub(super) async fn promote_due(conn: &ConnectionManager, queue: &str) -> Result<(), QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let script = Script::new(PROMOTE_DUE);
    // Until a run moves less than a whole chunk.
    loop {
        let moved: usize = script
            .key(cfg.scheduled_jobs_set())
            .key(cfg.active_jobs_list())
            .key(cfg.signal_list())
            .arg(now)
            .arg(PROMOTE_DUE_CHUNK)
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        if moved < PROMOTE_DUE_CHUNK {
            return Ok(());
        }
    }
}

/// apalis-redis acknowledges a deferred task by scheduling it for a retry (attempt counted):
/// take it back out of the schedule, restore the count (and what [`owe_attempt`] recorded) and
/// put it first in line. Only our own deferral: status `Pending` at the attempt we deferred. If
/// another worker took it first, or it moved on (run, failed, deferred again by someone
/// else), nothing changes and the attempt stays owed.
const UNLOCK_DEFERRED: &str = r"
-- KEYS: scheduled set, active list, the task's meta hash, signal list
-- ARGV: task id, the attempt its deferral was acknowledged at, its owed mark
if redis.call('HGET', KEYS[3], 'status') ~= 'Pending' then
  return 0
end
if tonumber(redis.call('HGET', KEYS[3], 'attempts') or '') ~= tonumber(ARGV[2]) then
  return 0
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local attempts = tonumber(ARGV[2])
if attempts > 0 then
  redis.call('HSET', KEYS[3], 'attempts', attempts - 1)
end
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('LPUSH', KEYS[4], 1)
return 1
";

pub(super) async fn unlock_deferred(
    conn: &ConnectionManager,
    queue: &str,
    id: &str,
    attempt: usize,
) -> Result<bool, QueueError> {
    let cfg = config(queue);
    let mut conn = conn.clone();
    let done: i64 = Script::new(UNLOCK_DEFERRED)
        .key(cfg.scheduled_jobs_set())
        .key(cfg.active_jobs_list())
        .key(format!("{}:{id}", cfg.job_meta_hash()))
        .key(cfg.signal_list())
        .arg(id)
        .arg(attempt)
        .arg(format!("{OWED}{attempt}"))
        .invoke_async(&mut conn)
        .await
        .map_err(store_error)?;
    Ok(done == 1)
}

/// Marks the attempt `attempt` that `worker`'s deferral is about to count as owed back (see
/// [`OWED`]); nothing when the worker no longer holds the task.
pub(super) async fn owe_attempt(
    conn: &ConnectionManager,
    queue: &str,
    worker: &str,
    id: &str,
    attempt: usize,
) -> Result<bool, QueueError> {
    marks(conn, queue, worker, id, true, &[format!("{OWED}{attempt}")]).await
}

/// A stopped worker's claimed tasks go first in line again, waiting (`Pending`, no holder);
/// the worker leaves the registry.
const RELEASE_WORKER: &str = r"
-- KEYS: the worker's inflight set, active list, workers set, signal list
-- ARGV: worker name, the meta hash prefix
local tasks = redis.call('SMEMBERS', KEYS[1])
if #tasks > 0 then
  for i = 1, #tasks do
    local meta = ARGV[2] .. ':' .. tasks[i]
    redis.call('HSET', meta, 'status', 'Pending')
    redis.call('HDEL', meta, 'locked_at', 'locked_by')
  end
  redis.call('LPUSH', KEYS[2], unpack(tasks))
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[4])
  redis.call('LPUSH', KEYS[4], 1)
end
redis.call('ZREM', KEYS[3], ARGV[1])
return #tasks
";

pub(super) async fn release_worker(
    conn: &ConnectionManager,
    queue: &str,
    worker: &str,
    deferred: &[Deferral],
) -> Result<u64, QueueError> {
    // Claimed tasks first: once they left the worker's inflight set, a late acknowledgement
    // of one fails instead of scheduling it. Then the deferrals acknowledged before.
    let cfg = config(queue);
    let mut c = conn.clone();
    let mut n: u64 = Script::new(RELEASE_WORKER)
        .key(inflight_set(queue, worker))
        .key(cfg.active_jobs_list())
        .key(cfg.workers_set())
        .key(cfg.signal_list())
        .arg(worker)
        .arg(cfg.job_meta_hash())
        .invoke_async(&mut c)
        .await
        .map_err(store_error)?;
    for d in deferred {
        if unlock_deferred(conn, queue, &d.id, d.attempt).await? {
            n += 1;
        }
    }
    Ok(n)
}
