#![doc = include_str!("../README.md")]
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

pub use leasepool_actors::{
    Backend, Counters, GrinderStats, JobHandle, LeaseError, LeaseId, LeaseInfo, PoolId, Stats,
    StopMode,
};

/// The guide pages in `docs/`, compiled here so that their code blocks run as doctests.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../docs/quickstart.md")]
    mod quickstart {}
    #[doc = include_str!("../docs/concepts.md")]
    mod concepts {}
    #[doc = include_str!("../docs/thread-backend.md")]
    mod thread_backend {}
    #[doc = include_str!("../docs/architecture.md")]
    mod architecture {}
    #[doc = include_str!("../docs/error-handling.md")]
    mod error_handling {}
    #[doc = include_str!("../docs/faq.md")]
    mod faq {}
    #[doc = include_str!("../docs/performance.md")]
    mod performance {}
    #[doc = include_str!("../docs/expiry.md")]
    mod expiry {}
    #[doc = include_str!("../docs/adaptive-sizing.md")]
    mod adaptive_sizing {}
    #[doc = include_str!("../docs/supervision.md")]
    mod supervision {}
    #[doc = include_str!("../docs/messages.md")]
    mod messages {}
    #[doc = include_str!("../docs/work-grinder.md")]
    mod work_grinder {}
    #[cfg(all(feature = "web", feature = "serde"))]
    #[doc = include_str!("../docs/actix-web.md")]
    mod actix_web {}
}
