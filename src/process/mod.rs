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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

// Code runs in one of two processes, and its folder says which: `child/` in a worker child,
// `parent/` in the host (the parent). Both speak `protocol`; `logs` has a half on each side.
mod child;
mod config;
pub(crate) mod counters;
#[cfg(unix)]
mod logs;
mod parent;
mod protocol;

use child::run::{run_encoded, run_many_encoded, ManyRunner, Runner};
pub(crate) use config::{configure, ProcessOptions, DEFAULT_MAX_MESSAGE};
pub(crate) use parent::batch::{send_gathered, Gathered};
pub(crate) use parent::call::run_here;

/// A job that can run in a worker child: the value is the input, [`run`](Self::run) is the
/// work. The same type runs on the thread backend too (`run` on a worker thread), with the same
/// answers.
///
/// A job travels by value, encoded with serde: it may not capture anything that does not
/// serialize (a connection, a lock, a closure). State a child needs for every job (a loaded
/// model, a connection) belongs in a `static` set up by [`Jobs::on_child_start`].
///
/// ```
/// use leasepool::process::ProcessJob;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize { width: u32, height: u32 }
///
/// impl ProcessJob for Resize {
///     const NAME: &'static str = "resize.v1";
///     type Output = u64;
///     fn run(self) -> u64 {
///         u64::from(self.width) * u64::from(self.height)
///     }
/// }
/// assert_eq!(Resize { width: 3, height: 4 }.run(), 12);
/// ```
pub trait ProcessJob: Serialize + DeserializeOwned + Send + 'static {
    /// A stable id, e.g. `"resize.v1"`: how a child finds the job's code. Change it when the
    /// input's shape changes, so an old worker program refuses the job instead of misreading it.
    const NAME: &'static str;
    /// What the job answers.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The work.
    fn run(self) -> Self::Output;
}

/// Bytes that travel as one byte string: the efficient way to give a [`ProcessJob`] a large
/// binary input or output (serde encodes a plain `Vec<u8>` number by number, several times
/// slower for a large payload). Derefs to `Vec<u8>`.
///
/// ```
/// use leasepool::process::{Bytes, ProcessJob};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Compress(Bytes);
///
/// impl ProcessJob for Compress {
///     const NAME: &'static str = "compress.v1";
///     type Output = Bytes;
///     fn run(self) -> Bytes {
///         let mut out = self.0;
///         out.dedup(); // stand-in for real work
///         out
///     }
/// }
/// assert_eq!(*Compress(Bytes(vec![1, 1, 2])).run(), vec![1, 2]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Bytes(#[serde(with = "protocol::bytes")] pub Vec<u8>);

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

/// The jobs a child can run, and what a child does when it starts. Build the same `Jobs` in
/// the worker program's [`init`] and in [`ManagerBuilder::process_jobs`](crate::ManagerBuilder::process_jobs)
/// (a function returning it is the easy way).
///
/// ```
/// use leasepool::process::{Jobs, ProcessJob};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Ping;
/// impl ProcessJob for Ping {
///     const NAME: &'static str = "ping.v1";
///     type Output = ();
///     fn run(self) {}
/// }
///
/// let jobs = Jobs::new()
///     .register::<Ping>()
///     .on_child_start(|| { /* open files, load a model into a static, … */ });
/// assert_eq!(jobs.names().collect::<Vec<_>>(), ["ping.v1"]);
/// ```
#[derive(Clone, Default)]
pub struct Jobs {
    runners: BTreeMap<&'static str, (Runner, ManyRunner)>,
    duplicate: Option<&'static str>,
    on_start: Vec<Arc<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("names", &self.runners.keys().collect::<Vec<_>>())
            .field("on_child_start", &self.on_start.len())
            .finish()
    }
}

impl Jobs {
    /// No jobs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds job `J`. Two jobs with the same `NAME` make
    /// [`ManagerBuilder::build`](crate::ManagerBuilder::build) fail with
    /// [`BuildError::DuplicateJobName`](crate::BuildError).
    #[must_use]
    pub fn register<J: ProcessJob>(mut self) -> Self {
        let runners: (Runner, ManyRunner) = (run_encoded::<J>, run_many_encoded::<J>);
        if self.runners.insert(J::NAME, runners).is_some() && self.duplicate.is_none() {
            self.duplicate = Some(J::NAME);
        }
        self
    }

    /// Runs `f` in each child as it starts, before it serves its first job (an initializer:
    /// open files, load a model into a `static`, install a tracing subscriber). A panic in `f`
    /// fails the child's start; the pool retries with backoff and logs the panic.
    #[must_use]
    pub fn on_child_start(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_start.push(Arc::new(f));
        self
    }

    /// The registered job names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.runners.keys().copied()
    }

    /// The first name registered twice, if any.
    pub(crate) fn duplicate(&self) -> Option<&'static str> {
        self.duplicate
    }

    #[cfg(unix)]
    pub(crate) fn runner(&self, name: &str) -> Option<Runner> {
        self.runners.get(name).map(|r| r.0)
    }

    #[cfg(unix)]
    pub(crate) fn many_runner(&self, name: &str) -> Option<ManyRunner> {
        self.runners.get(name).map(|r| r.1)
    }

    #[cfg(unix)]
    pub(crate) fn start_hooks(&self) -> &[Arc<dyn Fn() + Send + Sync>] {
        &self.on_start
    }
}

use leasepool_actors::panic_message as panic_text;

/// The answer for a job whose `step` (user code the child runs around `run`) panicked.
fn step_panicked<J: ProcessJob>(step: &str, payload: Box<dyn std::any::Any + Send>) -> String {
    let text = panic_text(payload.as_ref());
    drop_quietly(payload);
    format!("job {:?}: {step} panicked: {text}", J::NAME)
}

/// Room for a frame's header beside its inputs or outputs (a job name adds its length).
const FRAME_ROOM: usize = 256;

/// Drops a user value, containing a panic of its destructor (this may run on the host thread).
pub(crate) fn drop_quietly<T>(value: T) {
    let _ = leasepool_actors::drop_contained(value);
}

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
