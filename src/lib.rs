#![doc = include_str!(concat!(env!("OUT_DIR"), "/README.md"))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod grinder;
mod lease;
mod manager;
mod message;
#[cfg(feature = "web")]
#[cfg_attr(docsrs, doc(cfg(feature = "web")))]
pub mod web;

pub use builder::{BuildError, ManagerBuilder, MAX_TOTAL_WORKERS};
pub use grinder::{GrinderBuilder, WorkGrinder};
pub use lease::Lease;
pub use manager::{Acquire, LeaseManager};
pub use message::Handle;

pub use leasepool_actors::{Backend, Counters, GrinderStats, LeaseId, LeaseInfo, PoolId, StopMode};

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
pub use leasepool_actors::Stats;

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
    page!(observability, "observability");
    page!(architecture, "architecture");
    page!(performance, "performance");
    page!(faq, "faq");
    #[cfg(all(feature = "web", feature = "serde"))]
    page!(actix_web, "actix-web");
    // Without the features its examples need, the page is shown with its examples not compiled.
    #[cfg(not(all(feature = "web", feature = "serde")))]
    page!(actix_web, "actix-web.shown");
}
