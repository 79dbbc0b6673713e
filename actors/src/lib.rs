//! The actor engine behind [`leasepool`](https://docs.rs/leasepool).
//!
//! Users depend on `leasepool`, which re-exports what they need; this crate holds the actors:
//!
//! - [`ManagerActor`] (`manager.rs`): the supervisor — pools, leases, sizing, shutdown.
//! - [`PoolActor`] (`pool.rs`): owns one `SyncArbiter<Worker<S>>`.
//! - [`LeaseActor`] (`lease.rs`): one per lease — release, draining, hard expiry.
//! - [`GrinderActor`] (`grinder.rs`): forms batches for a `WorkGrinder` and runs each on a lease.
//! - [`Worker`] (`worker.rs`): the sync actor on each pool thread; serves its pool's job queue,
//!   every job inside `catch_unwind`.
//!
//! Every message is in [`messages`]. The shared books (idle pools, FIFO waiters, lease table)
//! are in `registry.rs`; `docs/architecture.md` in the repository describes the message flow
//! and the invariants.

mod blocking;
mod config;
mod error;
mod grinder;
mod handle;
mod host;
mod job;
mod lease;
mod manager;
pub mod messages;
mod pool;
mod registry;
mod stats;
mod threads;
mod worker;

pub use config::{EngineConfig, SizeProvider, StateFactory};
pub use error::LeaseError;
#[cfg(feature = "web")]
pub use error::{retry_after_secs, set_retry_after};
pub use grinder::{Grinder, GrinderActor, GrinderConfig, GrinderStats, StopMode};
pub use handle::{JobHandle, JobReply, LeaseCore};
pub use host::Engine;
pub use lease::LeaseActor;
pub use manager::ManagerActor;
pub use pool::{PoolActor, PoolQueue};
pub use registry::{LeaseParams, Registry, WaitMode, WaitTicket};
pub use stats::{Backend, Counters, LeaseId, LeaseInfo, PoolId, Stats};
pub use worker::Worker;
