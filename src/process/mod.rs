//! The process backend: leased pools of worker *processes* (feature `process`, Unix).
//!
//! Each worker thread of a pool owns one child process — the worker program (by default this
//! very executable) started with a private environment marker — and talks to it over a framed
//! pipe. Work is a [`ProcessJob`]: a serde value that names itself and runs in the child.
//!
//! - A job that panics in the child answers [`LeaseError::Panicked`](crate::LeaseError); the
//!   child survives.
//! - A child that crashes (abort, segfault, `exit`, the memory limit, the OOM killer) answers
//!   its job `WorkerLost`, is logged with its exit status or signal, and is replaced; the pool's
//!   other children are not affected.
//! - When a lease is revoked at its hard expiry, children still running its jobs are killed
//!   (their whole process group) and the jobs answer `Expired`: a runaway job really stops.
//!   `stop` past `shutdown_timeout` does the same.
//! - Children die with the parent (`PR_SET_PDEATHSIG` on Linux, and end of input everywhere).
//!
//! The rule: **[`init`] is the first line of `main`** of the worker program. In the parent it
//! returns at once; in a worker child it serves jobs and exits the process.
//!
//! ```no_run
//! use leasepool::process::{self, Jobs, ProcessJob};
//! use leasepool::{Backend, LeaseManager};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Shout(String);
//!
//! impl ProcessJob for Shout {
//!     const NAME: &'static str = "shout.v1";
//!     type Output = String;
//!     fn run(self) -> String {
//!         self.0.to_uppercase()
//!     }
//! }
//!
//! fn jobs() -> Jobs {
//!     Jobs::new().register::<Shout>()
//! }
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     process::init(jobs()); // first line: a worker child never returns from here
//!     let manager = LeaseManager::builder()
//!         .backend(Backend::Process)
//!         .process_jobs(jobs())
//!         .workers_per_pool(2)
//!         .build()?;
//!     manager.start().await?;
//!     let lease = manager.acquire().await?;
//!     assert_eq!(lease.call(Shout("hello".into())).await?, "HELLO");
//!     lease.release().await;
//!     manager.stop().await;
//!     Ok(())
//! }
//! ```
//!
//! See the guide page [`guide::process_backend`](crate::guide::process_backend) for when to
//! choose it, `cargo test` patterns, limits and what a job may not capture.

mod child;
mod config;
pub(crate) mod counters;
mod job;
#[cfg(unix)]
mod logs;
mod parent;
mod protocol;

pub use child::jobs::Jobs;
pub(crate) use config::{configure, ProcessOptions};
pub(crate) use job::drop_quietly;
pub use job::{Bytes, ProcessJob};
pub(crate) use parent::batch::{send_gathered, Gathered};
pub(crate) use parent::call::run_here;

/// **The first line of `main`** of a program whose process-backend managers use it as their
/// worker program (the default: the running executable). In the parent — any process not
/// started as a leasepool worker — it returns at once. In a worker child it serves jobs from
/// `jobs` until its parent closes the pipe or dies, then exits the process: it never returns.
///
/// Anything `main` does before `init` runs in every child too, and anything it prints on stdout
/// there would be taken for the handshake: keep `init` first.
pub fn init(jobs: Jobs) {
    #[cfg(unix)]
    child::serve::serve_if_child(jobs);
    #[cfg(not(unix))]
    drop(jobs);
}

/// Whether this process is a process-backend worker child (inside a job, or in
/// [`Jobs::on_child_start`]). A child may not start worker processes of its own.
pub fn is_worker_child() -> bool {
    #[cfg(unix)]
    {
        child::serve::in_child()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Fault injection (feature `testing`), for a job running in a worker child: its reply goes to
/// the parent as a malformed frame, which the parent must treat as a broken child (kill it,
/// answer the job `WorkerLost`, start a new one). Does nothing outside a child.
#[cfg(all(unix, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub fn corrupt_this_reply() {
    if child::serve::in_child() {
        child::serve::CORRUPT_REPLY.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
