//! [`Jobs`]: the registry of what a child can run — each job type's runners (in `run.rs`) by
//! name — and what a child does when it starts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::super::job::ProcessJob;
use super::run::{run_encoded, run_many_encoded, ManyRunner, Runner};

/// The jobs a child can run, and what a child does when it starts. Build the same `Jobs` in
/// the worker program's [`init`](super::super::init) and in [`ManagerBuilder::process_jobs`](crate::ManagerBuilder::process_jobs)
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
