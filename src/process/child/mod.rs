//! Code that runs in a worker child: the serve loop ([`init`](super::init) in a child), and
//! the running of encoded jobs.

pub(super) mod jobs;
#[cfg(unix)]
mod outbox;
pub(super) mod run;
#[cfg(unix)]
pub(super) mod serve;
