//! The actor engine behind [`leasepool`](https://docs.rs/leasepool). Users depend on
//! `leasepool`, which re-exports what they need; this crate exports what `leasepool` needs and
//! nothing more.
//!
//! The files form layers, and no file imports one above it (`docs/architecture.md` has the
//! picture):
//!
//! 1. values: `metrics` (metric names and handles, importing nothing of the engine), `stats`
//!    (ids, `Stats`, `Counters`), `error` (`LeaseError`, `BuildError`), `config` (settings,
//!    checked once), `sync` (the one way to take a lock);
//! 2. job and lease state: `current` (what a running job may ask about itself), `job` (a job, its pool's queue, its `JobHandle`), `lease_state` (a
//!    lease's atomics), `threads` (worker-thread tracking), `blocking` (waits outside async
//!    code), and `handle` (`LeaseCore`: the job path and release, built from those two);
//! 3. `books`: the pure state machine of pools, waiters and leases;
//! 4. `bookkeeper`: the books' one interpreter, behind the engine's short mutex (with the
//!    acquire path and a queued acquirer's `WaitTicket`);
//! 5. the actors, each with the messages it handles or emits: `worker` (`Worker`, the sync
//!    actor on a pool thread), `pool` (`PoolActor`), `lease` (`LeaseActor`), `manager`
//!    (`ManagerActor`, the supervisor);
//! 6. `host` (`Engine`: the host thread and the API `leasepool` drives), then the
//!    `WorkGrinder` engine, `grinder`: its plain data and books (`backlog`), the grinder and its
//!    batches, and on top its actor (`actor`).
#![warn(unreachable_pub)]

mod blocking;
mod bookkeeper;
mod books;
mod config;
mod current;
mod error;
mod grinder;
mod handle;
mod host;
mod job;
mod lease;
mod lease_state;
mod manager;
pub mod metrics;
mod pool;
mod stats;
mod sync;
mod threads;
mod worker;

// The engine's API, as `leasepool` drives it and re-exports part of it to users.
pub use bookkeeper::wait::WaitTicket;
pub use bookkeeper::LeaseParams;
pub use books::WaitMode;
pub use config::{EngineConfig, Settings, SizeProvider, StateFactory, WorkerHook};
pub use error::{
    retry_after_secs, set_retry_after, Answer, BuildError, LeaseError, MAX_TOTAL_WORKERS,
};
pub use grinder::{Grinder, GrinderConfig, GrinderStats, StopMode};
pub use handle::LeaseCore;
pub use host::Engine;
pub use job::JobHandle;
pub use manager::InjectFault;
pub use stats::{Backend, Capacity, Counters, LeaseId, LeaseInfo, PoolId, Stats};

/// Plumbing between this engine and `leasepool`'s process backend and grinder: what a running
/// job may ask of its worker, how a job's outcome is counted and answered, a grinder batch as
/// its launcher sees it. **Not a stable API**: hidden from the docs, changed whenever
/// `leasepool` needs it changed.
#[doc(hidden)]
pub mod plumbing {
    pub use crate::current::{job_stop_reason, request_state_rebuild};
    pub use crate::grinder::{Batch, BatchHold, RawLaunch};
    pub use crate::job::{
        drop_contained, drop_payload, panic_message, IfAbandoned, JobReply, JobTally,
    };
    pub use crate::lease_state::LeaseFacts;
}
