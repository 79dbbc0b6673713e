//! What a queue reports: counts per state, one task's state.

use std::time::SystemTime;

/// How many tasks of one queue are in each state ([`Queue::counts`](super::Queue::counts)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueCounts {
    /// Waiting to be claimed, retries included.
    pub pending: u64,
    /// Claimed by a worker (running or about to).
    pub claimed: u64,
    /// Done and acknowledged.
    pub done: u64,
    /// Failed for good: out of attempts, killed as unrunnable, or unreadable.
    pub failed: u64,
}

impl QueueCounts {
    /// Every task in the queue.
    pub fn total(&self) -> u64 {
        self.pending + self.claimed + self.done + self.failed
    }
}

/// One task's state in the queue ([`Queue::task`](super::Queue::task)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TaskInfo {
    /// `Pending` (waiting), `Scheduled` (waiting for its retry time; Redis), `Queued`
    /// (claimed), `Running`, `Done`, `Failed` (SQLite: failed, retried while attempts remain),
    /// `Killed` (failed for good).
    pub status: String,
    /// Attempts counted so far (put-backs and hand-backs are not counted).
    pub attempts: u64,
    /// Attempts allowed.
    pub max_attempts: u64,
    /// The worker instance holding it, if any.
    pub locked_by: Option<String>,
    /// The last attempt's result as the queue stored it (JSON), if any.
    pub last_result: Option<String>,
    /// When a task waiting for a retry becomes due (whole seconds, the store's clock); `None`
    /// for a task that is due now, running or finished.
    pub next_attempt_at: Option<SystemTime>,
}
