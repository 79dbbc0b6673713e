//! The names of leasepool's metrics, for dashboards and tests (feature `metrics` records them
//! through the `metrics` facade; see docs/observability.md for kinds, labels and queries).

pub use leasepool_actors::metrics::{
    ACQUIRES, ACQUIRE_WAIT, JOBS, JOBS_IN_FLIGHT, JOB_SECONDS, LEASE_HELD, POOLS, QUEUE_TASKS,
    QUEUE_TASK_WAIT, WAITERS, WORKERS_REPLACED,
};
