//! The Redis store: apalis-redis' keys (named by its `Config`), plus what apalis 1.0 does not
//! do (see the [`Store`] methods), each one Lua script (`scripts.rs`, called from `ops.rs`) so
//! that it is atomic against the workers' own scripts; apalis' worker runs on our
//! [connection](conn) (which fails unreadable tasks alone). Standalone Redis: the scripts read
//! keys they compute (the workers' in-flight sets, task meta hashes), which Redis Cluster does
//! not allow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use apalis_core::backend::ext::BackendExt as _;
use apalis_redis::RedisStorage;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;

use super::apalis::{run_apalis, Raw};
use super::{Intent, NewTask, RunSpec, Settled, Store};
use crate::queue::{QueueCounts, QueueError, TaskInfo};

mod conn;
pub(crate) mod judge;
mod keys;
mod ops;
mod scripts;

use keys::config;

pub(crate) struct RedisStore {
    conn: ConnectionManager,
    url: String,
}

impl RedisStore {
    pub(crate) async fn connect(url: &str) -> Result<RedisStore, QueueError> {
        let conn = apalis_redis::connect(url)
            .await
            .map_err(|e| QueueError::Store(format!("connecting to {}: {e}", redact(url))))?;
        Ok(RedisStore {
            conn,
            url: url.to_owned(),
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

impl Store for RedisStore {
    fn describe(&self) -> String {
        format!("redis {}", redact(&self.url))
    }

    fn push<'a>(
        &'a self,
        queue: &'a str,
        tasks: Vec<NewTask>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        self.push_chunks(queue, tasks).boxed()
    }

    fn counts<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueCounts, QueueError>> {
        RedisStore::counts(self, queue).boxed()
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
        let conn = conn::ScreenedConn::new(
            self.conn.clone(),
            &spec.queue,
            Arc::clone(&spec.on_unreadable),
        );
        let backend = Raw(RedisStorage::<Vec<u8>, _>::new(conn).with_config(config))
            .poll_with_interval(spec.poll_interval);
        run_apalis(backend, spec).boxed()
    }

    fn counted_attempt<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        attempt: usize,
        metadata: &'a HashMap<String, String>,
    ) -> BoxFuture<'a, Result<usize, QueueError>> {
        RedisStore::counted_attempt(self, queue, worker, id, attempt, metadata).boxed()
    }

    fn started<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        attempt: usize,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        RedisStore::started(self, queue, worker, id, attempt).boxed()
    }

    fn prepare<'a>(
        &'a self,
        queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>> {
        RedisStore::prepare(self, queue, worker, id, intent).boxed()
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
        RedisStore::release_worker(self, queue, worker, unsettled).boxed()
    }

    fn sweep<'a>(
        &'a self,
        queue: &'a str,
        orphan_timeout: Duration,
    ) -> BoxFuture<'a, Result<u64, QueueError>> {
        RedisStore::sweep(self, queue, orphan_timeout).boxed()
    }
}
