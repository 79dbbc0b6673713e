//! The process backend's counters: what happened to worker children, for
//! [`Counters`](crate::Counters) (`children_*`), and how a process job's answer counts
//! (`jobs_*`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use leasepool_actors::metrics::{JobEnd, Metrics, Replacement};
use leasepool_actors::plumbing::JobTally;

use crate::{Counters, LeaseError};

/// Live counts of one manager's children; shared by every worker thread's child.
#[derive(Debug, Default)]
pub(crate) struct ChildCounters {
    started: AtomicU64,
    crashed: AtomicU64,
    killed: AtomicU64,
    over_memory: AtomicU64,
    recycled: AtomicU64,
    /// `leasepool_workers_replaced_total` (feature `metrics`).
    metrics: Metrics,
}

/// How a child ended (other than at its pool's or manager's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildEnd {
    /// It died on its own: a crash, `exit`, a kill from outside, a malformed frame.
    Crashed,
    /// Killed because its job had to stop (hard expiry, `stop` past `shutdown_timeout`).
    Killed,
    /// Its memory limit: an allocation failed and it aborted.
    OverMemory,
    /// Ended after `max_jobs_per_child` jobs, to be replaced.
    Recycled,
}

impl ChildCounters {
    /// Counters that record replacements into `metrics` too.
    pub(crate) fn with_metrics(metrics: Metrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    pub(crate) fn started(&self) {
        self.started.fetch_add(1, Relaxed);
    }

    pub(crate) fn ended(&self, how: ChildEnd) {
        match how {
            ChildEnd::Crashed => &self.crashed,
            ChildEnd::Killed => &self.killed,
            ChildEnd::OverMemory => &self.over_memory,
            ChildEnd::Recycled => &self.recycled,
        }
        .fetch_add(1, Relaxed);
        self.metrics.replaced(match how {
            ChildEnd::Crashed => Replacement::Crashed,
            ChildEnd::Killed => Replacement::Killed,
            ChildEnd::OverMemory => Replacement::OverMemory,
            ChildEnd::Recycled => Replacement::Recycled,
        });
    }

    /// Copies the counts into `counters`.
    pub(crate) fn fill(&self, counters: &mut Counters) {
        counters.children_started = self.started.load(Relaxed);
        counters.children_crashed = self.crashed.load(Relaxed);
        counters.children_killed = self.killed.load(Relaxed);
        counters.children_over_memory = self.over_memory.load(Relaxed);
        counters.children_recycled = self.recycled.load(Relaxed);
    }
}

/// How a process job's answer counts, as the tally of one job: completed only if it
/// delivered a value, nowhere if it never ran (`JobEnd::of`, tested beside it).
pub(crate) fn job_tally<T>(answer: &Result<T, LeaseError>) -> JobTally {
    JobTally::one(JobEnd::of(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_lost_jobs_of_every_kind_and_skips_the_unrun() {
        let mut tally = job_tally::<()>(&Ok(()));
        for answer in [
            Err(LeaseError::WorkerLost),
            Err(LeaseError::Expired),
            Err(LeaseError::Stopped),
            Err(LeaseError::NeverRan),
            Err(LeaseError::ProcessJob("x".into())),
        ] {
            tally.add(JobEnd::of::<()>(&answer));
        }
        assert_eq!((tally.total(), tally.lost()), (5, 3));
        assert_eq!((tally.of(JobEnd::Ok), tally.of(JobEnd::Invalid)), (1, 1));
    }

    #[test]
    fn each_end_has_its_counter() {
        let c = ChildCounters::default();
        c.started();
        c.started();
        for how in [
            ChildEnd::Crashed,
            ChildEnd::Killed,
            ChildEnd::OverMemory,
            ChildEnd::Recycled,
            ChildEnd::Recycled,
        ] {
            c.ended(how);
        }
        let mut counters = Counters::default();
        c.fill(&mut counters);
        assert_eq!(
            (
                counters.children_started,
                counters.children_crashed,
                counters.children_killed,
                counters.children_over_memory,
                counters.children_recycled
            ),
            (2, 1, 1, 1, 2)
        );
    }
}
