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

#[cfg(test)]
mod tests {
    use super::*;

    /// The key names our Lua scripts and reads rely on, as apalis-redis 1.0 builds them (the
    /// store contract test checks what it writes under them).
    #[test]
    fn apalis_keys_are_where_the_scripts_look() {
        let c = config("q");
        assert_eq!(c.active_jobs_list(), "q:active");
        assert_eq!(c.scheduled_jobs_set(), "q:scheduled");
        assert_eq!(c.dead_jobs_set(), "q:dead");
        assert_eq!(c.done_jobs_set(), "q:done");
        assert_eq!(c.job_data_hash(), "q:data");
        assert_eq!(c.signal_list(), "q:signal");
        assert_eq!(c.workers_set(), "q:workers");
        assert_eq!(inflight_set("q", "w1"), "q:inflight:w1");
        assert_eq!(meta_hash("q", "01ID"), "q:meta:01ID");
        assert_eq!(settling_set("q"), "q:leasepool_settling");
    }
}
