//! The connection apalis-redis' worker uses: ours, passing every command through, with two
//! additions around apalis' fetch script (recognised by its keys):
//!
//! - before it, at most every 200 ms, due tasks are moved to the active list in chunks
//!   (apalis' fetch moves all due tasks with one Lua `unpack`, which fails past ~8 000);
//! - after it, the fetched tasks that apalis cannot read (an id, a count that does not fit a
//!   `u32`, a missing field or payload) are failed for good with their reason and taken out of
//!   the answer before apalis parses it. apalis fails the whole fetch on one such task — its
//!   worker then ends, and every replacement met the same task first again: one bad task
//!   stalled the queue for every worker;
//! - if the fetch script itself fails (a task's meta key of another type; more due tasks than
//!   its `unpack` takes), the tasks it moved into the worker's in-flight set are judged the
//!   same way, due tasks are moved over, and the fetch is tried once more.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{Arg, Cmd, Pipeline, RedisFuture, Script, Value};

use super::keys::config;
use super::{judge, scripts};
use crate::queue::store::{unix_now, OnUnreadable};
use crate::queue::QueueError;

/// How often a fetching worker moves due tasks over (at most).
const PROMOTE_EVERY: Duration = Duration::from_millis(200);

/// A claimed task as `CLAIMED` reads it: id, its meta key's type, its meta fields, whether its
/// payload exists (1).
type Claimed = (Vec<u8>, String, Vec<Vec<u8>>, i64);

#[derive(Clone)]
pub(crate) struct ScreenedConn {
    inner: ConnectionManager,
    queue: Arc<str>,
    /// apalis' fetch script's keys that tell it: (workers set, active list, scheduled set).
    keys: Arc<(String, String, String)>,
    on_unreadable: OnUnreadable,
    promoted: Arc<Mutex<Option<Instant>>>,
}

impl ScreenedConn {
    pub(crate) fn new(inner: ConnectionManager, queue: &str, on_unreadable: OnUnreadable) -> Self {
        let cfg = config(queue);
        ScreenedConn {
            inner,
            queue: Arc::from(queue),
            keys: Arc::new((
                cfg.workers_set(),
                cfg.active_jobs_list(),
                cfg.scheduled_jobs_set(),
            )),
            on_unreadable,
            promoted: Arc::default(),
        }
    }

    /// If `cmd` is apalis' fetch script on our queue (`EVALSHA`/`EVAL` with its 7 keys): the
    /// fetching worker's in-flight set.
    fn fetch_of(&self, cmd: &Cmd) -> Option<String> {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .map(|a| match a {
                Arg::Simple(b) => b,
                _ => &[][..],
            })
            .collect();
        let verb = args.first()?;
        if !(verb.eq_ignore_ascii_case(b"EVALSHA") || verb.eq_ignore_ascii_case(b"EVAL")) {
            return None;
        }
        let (workers, active, scheduled) = &*self.keys;
        let is = |i: usize, key: &str| args.get(i).is_some_and(|a| *a == key.as_bytes());
        if args.get(2).copied() == Some(&b"7"[..])
            && is(3, workers)
            && is(4, active)
            && is(9, scheduled)
        {
            args.get(5).map(|k| String::from_utf8_lossy(k).into_owned())
        } else {
            None
        }
    }

    fn promote_due_now(&self) -> bool {
        let mut last = self.promoted.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < PROMOTE_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Takes the tasks apalis cannot read out of a fetch's answer, failing each for good.
    async fn screen(&self, answer: Value, inflight: &str) -> Value {
        let Value::Array(parts) = &answer else {
            return answer;
        };
        let [Value::Array(payloads), Value::Array(metas)] = parts.as_slice() else {
            return answer;
        };
        if payloads.len() != metas.len() {
            return answer;
        }
        let mut keep = (Vec::new(), Vec::new());
        for (payload, meta) in payloads.iter().zip(metas) {
            match judge_fetched(payload, meta) {
                Ok(()) => {
                    keep.0.push(payload.clone());
                    keep.1.push(meta.clone());
                }
                Err((id, why)) => {
                    let why = format!("apalis cannot read this task: {why}");
                    match self.kill(inflight, &id, &why).await {
                        Ok(true) => (self.on_unreadable)(&String::from_utf8_lossy(&id), &why),
                        // No longer ours (re-enqueued as an orphan): dropped from the answer.
                        Ok(false) => {}
                        Err(e) => {
                            // Left in the answer: apalis fails this fetch; the failed fetch's
                            // handling tries again.
                            tracing::warn!(queue = %self.queue, error = %e, "could not fail an unreadable task");
                            keep.0.push(payload.clone());
                            keep.1.push(meta.clone());
                        }
                    }
                }
            }
        }
        Value::Array(vec![Value::Array(keep.0), Value::Array(keep.1)])
    }

    /// Fails a claimed task for good; whether it was still the worker's.
    async fn kill(
        &self,
        inflight: &str,
        id: &[u8],
        why: &str,
    ) -> Result<bool, ::redis::RedisError> {
        let cfg = config(&self.queue);
        // The meta key from the id's own bytes (an id need not be UTF-8).
        let mut meta = format!("{}:", cfg.job_meta_hash()).into_bytes();
        meta.extend_from_slice(id);
        let result = serde_json::json!({ "Err": why }).to_string();
        let mut conn = self.inner.clone();
        let killed: i64 = Script::new(scripts::KILL)
            .key(inflight)
            .key(cfg.dead_jobs_set())
            .key(meta)
            .arg(id)
            .arg(result)
            .arg(unix_now())
            .invoke_async(&mut conn)
            .await?;
        Ok(killed == 1)
    }

    /// After a fetch script failed: fails for good the tasks in the worker's in-flight set that
    /// apalis cannot read; how many.
    async fn screen_inflight(&self, inflight: &str) -> Result<usize, ::redis::RedisError> {
        let cfg = config(&self.queue);
        let mut conn = self.inner.clone();
        let claimed: Vec<Claimed> = Script::new(scripts::CLAIMED)
            .key(inflight)
            .key(cfg.job_data_hash())
            .arg(cfg.job_meta_hash())
            .invoke_async(&mut conn)
            .await?;
        let mut killed = 0;
        for (id, kind, fields, has_payload) in claimed {
            let judged = if kind == "hash" || kind == "none" {
                judge::unreadable(&id, &fields, has_payload == 1)
            } else {
                Err(format!("its meta key holds a {kind}, not a hash"))
            };
            if let Err(why) = judged {
                let why = format!("apalis cannot read this task: {why}");
                if self.kill(inflight, &id, &why).await? {
                    (self.on_unreadable)(&String::from_utf8_lossy(&id), &why);
                    killed += 1;
                }
            }
        }
        Ok(killed)
    }

    /// A fetch that failed: set right what can be (due tasks moved over, unreadable tasks
    /// failed alone), then the same fetch once more.
    async fn fetch_again(
        &mut self,
        cmd: &Cmd,
        inflight: &str,
        error: ::redis::RedisError,
    ) -> ::redis::RedisResult<Value> {
        if let Err(e) = promote_due(&self.inner, &self.queue).await {
            tracing::debug!(error = %e, "moving due tasks to the active list failed");
        }
        match self.screen_inflight(inflight).await {
            Ok(n) if n > 0 => {}
            Ok(_) => {
                tracing::debug!(queue = %self.queue, error = %error, "a fetch failed; trying it once more")
            }
            Err(e) => {
                tracing::debug!(queue = %self.queue, error = %e, "judging a failed fetch's tasks failed")
            }
        }
        let answer = self.inner.req_packed_command(cmd).await?;
        Ok(self.screen(answer, inflight).await)
    }
}

/// The id, meta fields and payload of one fetched task, judged; `Err((id, why))` if apalis
/// cannot read it.
fn judge_fetched(payload: &Value, meta: &Value) -> Result<(), (Vec<u8>, String)> {
    let Value::Array(fields) = meta else {
        return Err((Vec::new(), "its meta data is not a list".to_owned()));
    };
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        _ => None,
    };
    let id = fields.first().and_then(bytes).unwrap_or_default();
    let rest: Option<Vec<Vec<u8>>> = fields.iter().skip(1).map(bytes).collect();
    let Some(rest) = rest else {
        return Err((id, "a field of its meta hash is not a string".to_owned()));
    };
    let has_payload = matches!(payload, Value::BulkString(_));
    judge::unreadable(&id, &rest, has_payload).map_err(|why| (id, why))
}

impl ConnectionLike for ScreenedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let fetch = self.fetch_of(cmd);
        Box::pin(async move {
            if fetch.is_some() && self.promote_due_now() {
                if let Err(e) = promote_due(&self.inner, &self.queue).await {
                    tracing::debug!(error = %e, "moving due tasks to the active list failed");
                }
            }
            let answer = self.inner.req_packed_command(cmd).await;
            match (fetch, answer) {
                (None, answer) => answer,
                // The script failed on the server (answered as a value; apalis makes it an
                // error).
                (Some(inflight), Ok(Value::ServerError(e))) => {
                    self.fetch_again(cmd, &inflight, e.into()).await
                }
                (Some(inflight), Ok(answer)) => Ok(self.screen(answer, &inflight).await),
                // A lost connection may have run the script: the worker is replaced, and its
                // release hands back whatever the script moved.
                (Some(_), Err(e))
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_timeout() =>
                {
                    Err(e)
                }
                (Some(inflight), Err(e)) => self.fetch_again(cmd, &inflight, e).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Due tasks moved per script run before a fetch.
const PROMOTE_DUE_CHUNK: usize = 1000;

/// Moves due scheduled tasks (retries whose time came) where a fetch finds them, a chunk per
/// script run.
pub(crate) async fn promote_due(conn: &ConnectionManager, queue: &str) -> Result<(), QueueError> {
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
