#![doc = include_str!(concat!(env!("OUT_DIR"), "/README.md"))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod grinder;
mod lease;
mod manager;
mod message;
pub mod metrics;
#[cfg(any(feature = "web", feature = "tower"))]
mod per_request;
#[cfg(feature = "process")]
#[cfg_attr(docsrs, doc(cfg(feature = "process")))]
pub mod process;
#[cfg(feature = "queue")]
#[cfg_attr(docsrs, doc(cfg(feature = "queue")))]
pub mod queue;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
#[cfg(feature = "web")]
#[cfg_attr(docsrs, doc(cfg(feature = "web")))]
pub mod web;

pub use builder::ManagerBuilder;
pub use grinder::{GrinderBuilder, WorkGrinder};
pub use lease::Lease;
pub use manager::{Acquire, LeaseManager};
pub use message::Handle;

/// # Example
///
/// ```
/// use leasepool::{BuildError, LeaseManager};
///
/// let err = LeaseManager::builder().workers_per_pool(0).build().unwrap_err();
/// assert_eq!(err, BuildError::Zero { setting: "workers_per_pool" });
/// assert_eq!(err.to_string(), "workers_per_pool must be at least 1 (got 0)");
/// ```
pub use leasepool_actors::BuildError;
pub use leasepool_actors::MAX_TOTAL_WORKERS;

/// # Example
///
/// ```
/// use leasepool::{Backend, LeaseManager};
///
/// let manager = LeaseManager::builder().backend(Backend::Thread).build().expect("valid");
/// assert_eq!(manager.backend(), Backend::Thread);
/// assert_eq!(Backend::Thread.to_string(), "thread");
/// ```
pub use leasepool_actors::Backend;

/// # Example
///
/// Counters only grow (across stop/start), so a monitor reports their differences:
///
/// ```
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().build()?;
/// manager.start().await?;
/// let before = manager.stats().await.counters;
/// let lease = manager.acquire().await?;
/// let _ = lease.run(|| panic!("oops")).await;
/// lease.release().await;
/// let after = manager.stats().await.counters;
/// assert_eq!(after.acquired - before.acquired, 1);
/// assert_eq!(after.jobs_panicked - before.jobs_panicked, 1);
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::Counters;

/// # Example
///
/// ```
/// use leasepool::{LeaseManager, WorkGrinder};
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().build()?;
/// manager.start().await?;
/// let grinder = WorkGrinder::builder(&manager).batch_size_threshold(1).build()?;
/// grinder.start().await?;
/// grinder.submit(|| ()).await?;
/// let stats = grinder.stats().await;
/// assert!(stats.started);
/// assert_eq!(stats.pending, 0);
/// # grinder.stop(leasepool::StopMode::Drain).await;
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::GrinderStats;

/// # Example
///
/// ```
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().max_pools(2).build()?;
/// manager.start().await?;
/// let (a, b) = (manager.acquire().await?, manager.acquire().await?);
/// assert_ne!(a.id(), b.id());
/// assert!(a.id().get() < b.id().get(), "increasing in acquisition order");
/// assert_eq!(a.id().to_string(), format!("lease-{}", a.id().get()));
/// # drop((a, b));
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::LeaseId;

/// # Example
///
/// ```
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().build()?;
/// manager.start().await?;
/// let lease = manager.acquire().owner("nightly").await?;
/// let info = &manager.stats().await.leases[0];
/// assert_eq!((info.id, info.owner.as_deref()), (lease.id(), Some("nightly")));
/// assert_eq!((info.in_flight, info.draining), (0, false));
/// assert_eq!(info.pool, lease.pool());
/// # lease.release().await;
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::LeaseInfo;

/// # Example
///
/// ```
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().name_prefix("docs").build()?;
/// manager.start().await?;
/// let lease = manager.acquire().await?;
/// // Worker threads are named `{prefix}-{pool}-{worker}`.
/// let name = lease.run(|| std::thread::current().name().map(str::to_owned)).await?;
/// assert!(name.unwrap().starts_with(&format!("docs-{}-", lease.pool().get())));
/// # lease.release().await;
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::PoolId;

/// # Example
///
/// ```
/// use leasepool::{LeaseError, LeaseManager, StopMode, WorkGrinder};
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().build()?;
/// manager.start().await?;
/// let grinder = WorkGrinder::builder(&manager).batch_size_threshold(100).build()?;
/// grinder.start().await?;
/// let pending = grinder.enqueue(|| "never runs")?; // below the threshold: it waits
/// grinder.stop(StopMode::CancelPending).await;
/// assert_eq!(pending.await, Err(LeaseError::Stopped));
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::StopMode;

/// # Example
///
/// Matching the outcomes a caller handles, with a fallback arm (the enum is
/// `#[non_exhaustive]`):
///
/// ```
/// use std::time::Duration;
/// use leasepool::{LeaseError, LeaseManager};
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().build()?;
/// assert_eq!(manager.acquire().await.unwrap_err(), LeaseError::NotStarted);
/// manager.start().await?;
/// let lease = manager.acquire().await?;
/// match lease.run(|| panic!("bad input")).await {
///     Err(LeaseError::Panicked(msg)) => assert_eq!(msg, "bad input"),
///     other => panic!("unexpected {other:?}"),
/// }
/// let busy = manager.acquire().timeout(Duration::from_millis(10)).await.unwrap_err();
/// assert!(busy.is_overload(), "busy: shed load, retry later");
/// assert_eq!(busy.code(), "timeout");
/// # lease.release().await;
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::LeaseError;

/// # Example
///
/// `Lease::submit` returns a handle at once; await it later, or drop it (the job still runs).
/// From a thread that may block, `blocking_wait` waits without an async runtime.
///
/// ```
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().workers_per_pool(4).build()?;
/// manager.start().await?;
/// let lease = manager.acquire().await?;
/// let handles: Vec<_> = (1..=4u64)
///     .map(|i| lease.submit(move || i * 10))
///     .collect::<Result<_, _>>()?;
/// let mut total = 0;
/// for h in handles {
///     total += h.await?; // the four ran in parallel
/// }
/// assert_eq!(total, 100);
///
/// let h = lease.submit(|| "from a plain thread")?;
/// let text = std::thread::spawn(move || h.blocking_wait()).join().unwrap()?;
/// assert_eq!(text, "from a plain thread");
/// # lease.release().await;
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::JobHandle;

/// # Example
///
/// A thread cannot be interrupted, but a long job can look: this one stops when its lease is
/// revoked at the hard expiry, instead of running on with no lease.
///
/// ```
/// use std::time::Duration;
/// use leasepool::{job_stop_reason, LeaseError, LeaseManager};
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().lease_grace(Duration::ZERO).build()?;
/// manager.start().await?;
/// let lease = manager.acquire().lease_for(Duration::from_millis(50)).await?;
/// let why = lease
///     .run(|| loop {
///         if let Some(why) = job_stop_reason() {
///             return why; // clean up, give up
///         }
///         std::thread::sleep(Duration::from_millis(1)); // a slice of the work
///     })
///     .await?;
/// assert_eq!(why, LeaseError::Expired);
/// assert_eq!(job_stop_reason(), None, "outside a job there is no reason");
/// # drop(lease);
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::plumbing::job_stop_reason;

/// # Example
///
/// A job that finds its worker's state broken (a connection the server closed) asks for a
/// fresh one: after it has answered, its worker calls the state factory again.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
/// use std::sync::Arc;
/// use leasepool::{request_state_rebuild, LeaseManager};
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let built = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&built);
/// let manager = LeaseManager::builder()
///     .workers_per_pool(1)
///     .worker_state(move || counter.fetch_add(1, SeqCst)) // the "connection" number
///     .build()?;
/// manager.start().await?;
/// let lease = manager.acquire().await?;
/// assert_eq!(lease.run_with(|conn| *conn).await?, 0);
/// lease.run_with(|_| request_state_rebuild("the server closed the connection")).await?;
/// assert_eq!(lease.run_with(|conn| *conn).await?, 1, "a fresh connection");
/// # drop(lease);
/// # manager.stop().await;
/// # Ok(()) }
/// ```
pub use leasepool_actors::plumbing::request_state_rebuild;

/// # Example
///
/// ```
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().max_pools(3).min_pools(1).build()?;
/// manager.start().await?;
/// let a = manager.acquire().owner("a").await?;
/// let s = manager.stats().await;
/// assert_eq!((s.total, s.leased, s.available, s.max_pools), (1, 1, 0, 3));
/// assert_eq!(s.leases[0].owner.as_deref(), Some("a"));
/// assert_eq!(s.counters.acquired, 1);
/// # a.release().await;
/// # manager.stop().await;
/// # Ok(()) }
/// ```
///
/// With the cargo feature `serde`, `Stats` (and `LeaseInfo`, `Counters`) implement
/// `serde::Serialize`.
pub use leasepool_actors::{Capacity, Stats};

/// The guide: the pages of `docs/` in the repository, here so that they read on docs.rs and
/// their examples run as doctests.
pub mod guide {
    macro_rules! page {
        ($name:ident, $file:literal) => {
            #[doc = include_str!(concat!(env!("OUT_DIR"), "/docs/", $file, ".md"))]
            pub mod $name {}
        };
    }
    page!(quickstart, "quickstart");
    page!(concepts, "concepts");
    page!(thread_backend, "thread-backend");
    page!(expiry, "expiry");
    page!(adaptive_sizing, "adaptive-sizing");
    page!(supervision, "supervision");
    page!(work_grinder, "work-grinder");
    page!(messages, "messages");
    page!(error_handling, "error-handling");
    #[cfg(feature = "metrics")]
    page!(observability, "observability");
    #[cfg(not(feature = "metrics"))]
    page!(observability, "observability.shown");
    page!(architecture, "architecture");
    page!(performance, "performance");
    page!(faq, "faq");
    #[cfg(all(feature = "web", feature = "serde"))]
    page!(actix_web, "actix-web");
    // Without the features its examples need, the page is shown with its examples not compiled.
    #[cfg(not(all(feature = "web", feature = "serde")))]
    page!(actix_web, "actix-web.shown");
    #[cfg(feature = "axum")]
    page!(tower, "tower");
    #[cfg(not(feature = "axum"))]
    page!(tower, "tower.shown");
    #[cfg(feature = "process")]
    page!(process_backend, "process-backend");
    #[cfg(not(feature = "process"))]
    page!(process_backend, "process-backend.shown");
    #[cfg(feature = "queue")]
    page!(distributed, "distributed");
    #[cfg(not(feature = "queue"))]
    page!(distributed, "distributed.shown");
}
