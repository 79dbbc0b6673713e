#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod lease;
mod manager;
mod message;

pub use builder::{BuildError, ManagerBuilder, MAX_TOTAL_WORKERS};
pub use lease::Lease;
pub use manager::{Acquire, AcquireFuture, LeaseManager};
pub use message::Handle;

pub use leasepool_actors::{
    Backend, Counters, JobHandle, LeaseError, LeaseId, LeaseInfo, PoolId, Stats,
};

/// The guide pages in `docs/`, compiled here so their examples are tested.
#[cfg(doctest)]
pub mod guide {}
