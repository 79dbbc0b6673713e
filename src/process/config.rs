//! The process backend's settings: checked by the builder, and turned into a worker state
//! factory that starts each worker's child.

use std::sync::Arc;

#[cfg(unix)]
use super::parent::{conn, slot};
use super::protocol::{DEFAULT_MAX_MESSAGE, MIN_MAX_MESSAGE};
use super::{counters, Jobs};

/// The settings of a process backend, gathered by the builder.
#[derive(Debug, Clone)]
pub(crate) struct ProcessOptions {
    pub(crate) jobs: Option<Jobs>,
    pub(crate) program: Option<std::path::PathBuf>,
    pub(crate) max_jobs_per_child: Option<usize>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) max_message_bytes: usize,
    pub(crate) start_timeout: std::time::Duration,
}

/// Settings checked and wrapped for the process backend, and its children's counters.
pub(crate) type Configured<S> = (
    leasepool_actors::Settings<S>,
    Option<Arc<counters::ChildCounters>>,
);

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            jobs: None,
            program: None,
            max_jobs_per_child: None,
            memory_limit: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            start_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Checks the process settings and, for [`Backend::Process`](crate::Backend), wraps the worker
/// state factory so that each worker thread starts and owns a child.
/// Also returns the children's counters, for the manager's stats (`None`: thread backend).
pub(crate) fn configure<S: 'static>(
    #[cfg_attr(not(unix), allow(unused_mut))] mut settings: leasepool_actors::Settings<S>,
    options: ProcessOptions,
) -> Result<Configured<S>, crate::BuildError> {
    use crate::BuildError;
    if let Some(name) = options.jobs.as_ref().and_then(Jobs::duplicate) {
        return Err(BuildError::DuplicateJobName(name));
    }
    for (setting, value) in [
        ("max_jobs_per_child", options.max_jobs_per_child),
        (
            "child_memory_limit",
            options.memory_limit.map(|b| usize::from(b != 0)),
        ),
    ] {
        if value == Some(0) {
            return Err(BuildError::Zero { setting });
        }
    }
    if options.max_message_bytes < MIN_MAX_MESSAGE {
        return Err(BuildError::TooSmall {
            setting: "max_message_bytes",
            min: MIN_MAX_MESSAGE as u64,
            got: options.max_message_bytes as u64,
        });
    }
    if options.start_timeout.is_zero() {
        return Err(BuildError::ZeroDuration {
            setting: "child_start_timeout",
        });
    }
    if settings.backend != crate::Backend::Process {
        return Ok((settings, None));
    }
    #[cfg(not(unix))]
    {
        return Err(BuildError::UnsupportedBackend {
            backend: crate::Backend::Process,
            why: format!("it runs on Unix only, not on {}", std::env::consts::OS),
        });
    }
    #[cfg(unix)]
    {
        if options.jobs.is_none() {
            return Err(BuildError::MissingProcessJobs);
        }
        let program = match options.program {
            Some(path) => path,
            None => std::env::current_exe().map_err(|e| {
                BuildError::WorkerProgram(format!("cannot find the running executable: {e}"))
            })?,
        };
        if !program.is_file() {
            return Err(BuildError::WorkerProgram(format!(
                "{} is not a file",
                program.display()
            )));
        }
        let metrics = leasepool_actors::metrics::Metrics::register(
            &settings.name_prefix,
            &crate::Backend::Process.to_string(),
        );
        let counters = Arc::new(counters::ChildCounters::with_metrics(metrics));
        let spec = Arc::new(conn::ChildSpec {
            manager: settings.name_prefix.clone(),
            program,
            max_message: options.max_message_bytes,
            memory_limit: options.memory_limit,
            max_jobs_per_child: options.max_jobs_per_child,
            start_timeout: options.start_timeout,
            counters: Arc::clone(&counters),
            stop_reason: leasepool_actors::plumbing::job_stop_reason,
        });
        settings.state_factory = slot::wrap_factory(settings.state_factory, spec);
        settings.worker_exit = Some(Arc::new(slot::end_child));
        Ok((settings, Some(counters)))
    }
}
