//! The process backend's counters: what happened to worker children, for
//! [`Counters`](crate::Counters) (`children_*`), and how a process job's answer counts
//! (`jobs_*`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use leasepool_actors::plumbing::{JobCount, JobTally};

use crate::{Counters, LeaseError};

/// Live counts of one manager's children; shared by every worker thread's child.
#[derive(Debug, Default)]
pub(crate) struct ChildCounters {
    started: AtomicU64,
    crashed: AtomicU64,
    killed: AtomicU64,
    over_memory: AtomicU64,
    recycled: AtomicU64,
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

/// [`job_count`] as the tally of one job.
pub(crate) fn job_tally<T>(answer: &Result<T, LeaseError>) -> JobTally {
    JobTally::one(job_count(answer))
}

/// How a process job's answer counts: completed only if it delivered a value.
pub(crate) fn job_count<T>(answer: &Result<T, LeaseError>) -> JobCount {
    match answer {
        Ok(_) => JobCount::Completed,
        Err(LeaseError::Panicked(_)) => JobCount::Panicked,
        Err(LeaseError::NeverRan) => JobCount::NotRun,
        Err(LeaseError::WorkerLost | LeaseError::Expired | LeaseError::Stopped) => JobCount::Lost,
        Err(_) => JobCount::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_as_what_happened() {
        assert_eq!(job_count::<()>(&Ok(())), JobCount::Completed);
        assert_eq!(
            job_count::<()>(&Err(LeaseError::Panicked("p".into()))),
            JobCount::Panicked
        );
        assert_eq!(
            job_count::<()>(&Err(LeaseError::NeverRan)),
            JobCount::NotRun
        );
        for lost in [
            LeaseError::WorkerLost,
            LeaseError::Expired,
            LeaseError::Stopped,
        ] {
            assert_eq!(job_count::<()>(&Err(lost)), JobCount::Lost);
        }
        assert_eq!(
            job_count::<()>(&Err(LeaseError::ProcessJob("x".into()))),
            JobCount::Failed
        );
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
