//! Code that runs in the host process (the parent of the worker children): a job or a grinder
//! batch run where its lease's worker is, the connection to a child, its watcher, and the
//! worker's slot — the one place that talks to the engine.

pub(super) mod batch;
pub(super) mod call;
#[cfg(unix)]
pub(super) mod conn;
#[cfg(unix)]
mod exchange;
#[cfg(unix)]
pub(super) mod slot;
#[cfg(unix)]
mod watcher;
