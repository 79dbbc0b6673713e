//! Durable-queue jobs (feature `queue`) on both stores (a SQLite file; a private
//! redis-server): worker processes sharing one queue, capacity-aware claiming, the outcome
//! mapping and retries, hostile tasks and failing stores, graceful stop and hand-back, orphan
//! re-runs after a SIGKILL. One module per subject; `fixtures` holds what they share.
//!
//! No libtest harness: this binary is also the worker processes' program (`LP_QUEUE_ROLE`).
//! `LPQ_TRACE=apalis_core=debug,leasepool::queue=debug` prints apalis' and the worker's logs.

mod claiming;
mod contract;
mod deferrals;
mod failures;
mod fixtures;
mod fleet;
mod hostile;
mod hostile_pg_rows;
mod hostile_rows;
mod lifecycle;
mod outcomes;
mod postgres;
mod postgres_server;
mod retries;
mod settings;

use fixtures::{process_jobs, stop_redis, worker_role, ROLE};

// ---- the runner -------------------------------------------------------------------------------

fn main() {
    leasepool::process::init(process_jobs());
    if std::env::var_os("LPQ_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("LPQ_TRACE"))
            .with_writer(std::io::stderr)
            .init();
    } else if std::env::var(ROLE).is_err() {
        fixtures::keep_queue_logs();
    }
    if std::env::var(ROLE).as_deref() == Ok("work") {
        worker_role();
    }
    // Each test registers itself where it is written (`#[testkit::test]`); the in-process ones
    // run against both stores: `module::test::sqlite`, `module::test::redis`.
    let ran = testkit::Runner::new(|test| actix_rt::System::new().block_on(test)).run();
    stop_redis();
    postgres_server::stop_postgres();
    ran.finish();
}
