//! The Redis keys the store reads and writes: apalis-redis' (from its `Config`) and ours.

use apalis_core::worker::context::WorkerContext;
use apalis_redis::Config;

pub(super) fn config(queue: &str) -> Config {
    Config::default().queue(queue)
}

pub(super) fn inflight_set(queue: &str, worker: &str) -> String {
    config(queue).inflight_set_for(&WorkerContext::new(worker))
}

pub(super) fn meta_hash(queue: &str, id: &str) -> String {
    format!("{}:{id}", config(queue).job_meta_hash())
}

/// Ours: the attempts whose acknowledgement a worker still has to set right (see `scripts`).
pub(super) fn settling_set(queue: &str) -> String {
    format!("{queue}:leasepool_settling")
}
