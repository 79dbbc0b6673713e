//! Message-based jobs from a durable queue, each run on a lease (feature `queue`).
//!
//! leasepool bounds blocking work inside one process; a [`Queue`] spreads message-based jobs over
//! many processes and machines. The queue engine is [apalis](https://docs.rs/apalis) 1.x: its
//! SQLite backend (one file, several processes, no server to install), its Redis backend or its
//! PostgreSQL backend (a fleet). A [`QueueWorker`] claims tasks only while its [`LeaseManager`](crate::LeaseManager) has room for them (plus
//! a small, bounded prefetch) and runs each on a lease of its own, so a saturated instance
//! leaves tasks for the others. The guide page `docs/distributed.md` tells the whole story.
//!
//! ```
//! use std::time::Duration;
//! use leasepool::queue::{Queue, QueueWorker};
//! use leasepool::LeaseManager;
//!
//! # #[actix_rt::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("leasepool-queue-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let queue = Queue::sqlite(dir.join("jobs.db")).await?;
//! for n in 0..10_u64 {
//!     queue.push("squares", n).await?;
//! }
//! let manager = LeaseManager::builder().max_pools(2).workers_per_pool(1).build()?;
//! manager.start().await?;
//! let worker = QueueWorker::builder(&manager, &queue, "squares")
//!     .poll_interval(Duration::from_millis(20))
//!     .build_blocking(|n: u64| -> Result<(), String> {
//!         let _ = n * n; // the blocking work
//!         Ok(())
//!     })?;
//! worker.start()?;
//! while worker.stats().done < 10 {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! let stats = worker.stop().await;
//! assert_eq!(stats.done, 10);
//! assert_eq!(queue.counts("squares").await?.done, 10);
//! manager.stop().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! # Outcomes
//!
//! | what happened | the task | counter |
//! |---|---|---|
//! | the job returned `Ok` | done, acknowledged once | `done` |
//! | the job returned `Err(e)` or panicked | the attempt fails with the message; retried after the [`RetryPolicy`]'s delay while attempts remain (`max_attempts`, default 25) | `failed` |
//! | `WorkerLost`, `Expired` (a crash, a revoked lease) | the attempt fails and is retried the same way | `retried` |
//! | no lease came (`Unavailable`, `Timeout`, `NoHealthyPool`, `Stopped`) | put back for anyone, attempt not counted | `put_back` |
//! | the job cannot run here (`InvalidArgument`, `ProcessJob`) | killed, never retried | `failed` |
//! | the payload does not decode as `T`, or apalis cannot read the stored task | killed with the reason, never retried; the others run on | `failed` |
//! | the worker stopped before the task got a lease, or it outran the shutdown timeout | handed back, attempt not counted | `handed_back` |
//!
//! Delivery is **at least once**: a task handed back after its shutdown timeout, or one whose
//! instance was killed (re-run by the others once its heartbeat is older than
//! [`orphan_timeout`](QueueWorkerBuilder::orphan_timeout)), may have done part or all of its work.
//! Make jobs idempotent; `docs/distributed.md` shows how.
//!
//! # Limits
//!
//! Payloads are JSON of at most [`Queue::payload_limit`] bytes (default
//! [`DEFAULT_PAYLOAD_LIMIT`], 16 MiB) nested at most [`MAX_DEPTH`] levels; a task gets 1 to
//! [`MAX_ATTEMPTS`] attempts. Pushes outside these are refused by name; a stored task outside
//! them (written by another producer) fails alone when a worker meets it. Every `Duration`
//! setting has a documented range ([`QueueWorkerBuilder`]), checked at `build`. A stop takes at
//! most `shutdown_timeout` + [`STOP_MARGIN`].
//!
//! Requires Rust 1.94 (apalis 1.0 builds on sqlx 0.9).

mod error;
mod info;
mod limits;
mod payload;
mod producer;
mod retry;
mod store;
mod trace;
mod worker;

pub use error::QueueError;
pub use info::{QueueCounts, TaskInfo};
pub use limits::{DEFAULT_PAYLOAD_LIMIT, MAX_ATTEMPTS, MAX_DEPTH, MAX_PAYLOAD_LIMIT};
pub use producer::{PushOptions, Queue, DEFAULT_ATTEMPTS};
pub use retry::RetryPolicy;
pub use trace::TRACE_META;
pub use worker::builder::QueueWorkerBuilder;
pub use worker::{QueueStats, QueueWorker, STOP_MARGIN};

/// The connection pool [`Queue::postgres_pool`] takes (`sqlx` 0.9's, re-exported so that the
/// versions match).
pub use sqlx::PgPool;
