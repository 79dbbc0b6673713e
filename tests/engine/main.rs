//! The engine's tests, one module per subject: acquiring and waiting, jobs and messages,
//! expiry, sizing, supervision, shutdown, stats, the `WorkGrinder`, runtimes, settings at their
//! edges, logging, and the source's layers. One binary (they used to be sixteen, each linking
//! actix and tokio); libtest runs them as before (`cargo test --test engine acquire::`).

mod acquire;
mod blocking_calls;
mod bounded;
mod destructors;
mod estimate;
mod expiry;
mod grinder;
mod grinder_lifecycle;
mod jobs;
mod layers;
mod lifecycle_edges;
mod logging;
mod messages;
mod pool_health;
mod runtimes;
mod shutdown;
mod sizing;
mod stats;
mod supervision;
mod validation;
