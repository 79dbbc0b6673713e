//! What a queue reports: counts per state, one task's state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// Counts `n` rows of a SQL store in apalis' `status`; `spent`: out of attempts.
    pub(crate) fn add_rows(&mut self, status: &str, spent: bool, n: u64) {
        match status {
            "Pending" => self.pending += n,
            "Queued" | "Running" => self.claimed += n,
            "Done" => self.done += n,
            "Failed" if !spent => self.pending += n,
            _ => self.failed += n,
        }
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

impl TaskInfo {
    /// A SQL store's row as the queue reports it: a task `waiting` (pending, or failed with
    /// attempts left) whose `run_at` (seconds since 1970) is after `now` is due then.
    pub(crate) fn from_row(
        status: String,
        (attempts, max_attempts): (u64, u64),
        locked_by: Option<String>,
        last_result: Option<String>,
        run_at: Option<u64>,
        now: u64,
    ) -> TaskInfo {
        let waiting = status == "Pending" || (status == "Failed" && attempts < max_attempts);
        let next_attempt_at = run_at
            .filter(|t| waiting && *t > now)
            .map(|t| UNIX_EPOCH + Duration::from_secs(t));
        TaskInfo {
            status,
            attempts,
            max_attempts,
            locked_by,
            last_result,
            next_attempt_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_counted_by_status_and_attempts_left() {
        let mut c = QueueCounts::default();
        for (status, spent, n) in [
            ("Pending", false, 1),
            ("Queued", false, 2),
            ("Running", false, 4),
            ("Done", true, 8),
            ("Failed", false, 16),
            ("Failed", true, 32),
            ("Killed", false, 64),
            ("Bogus", false, 128),
        ] {
            c.add_rows(status, spent, n);
        }
        assert_eq!(
            c,
            QueueCounts {
                pending: 17,
                claimed: 6,
                done: 8,
                failed: 224
            }
        );
    }

    #[test]
    fn a_row_is_due_later_only_while_it_waits_for_a_time_to_come() {
        let at = |status: &str, attempts: u64, run_at: Option<u64>| {
            TaskInfo::from_row(status.into(), (attempts, 3), None, None, run_at, 100)
                .next_attempt_at
        };
        let later = Some(UNIX_EPOCH + Duration::from_secs(160));
        assert_eq!(at("Pending", 0, Some(160)), later);
        assert_eq!(at("Failed", 2, Some(160)), later, "attempts left");
        assert_eq!(at("Failed", 3, Some(160)), None, "out of attempts");
        assert_eq!(at("Pending", 0, Some(100)), None, "due now");
        assert_eq!(at("Pending", 0, None), None);
        for status in ["Queued", "Running", "Done", "Killed"] {
            assert_eq!(at(status, 0, Some(160)), None, "{status}");
        }
        let info = TaskInfo::from_row(
            "Done".into(),
            (1, 3),
            Some("w".into()),
            Some("{}".into()),
            None,
            0,
        );
        assert_eq!(
            (
                info.attempts,
                info.max_attempts,
                info.locked_by.as_deref(),
                info.last_result.as_deref()
            ),
            (1, 3, Some("w"), Some("{}"))
        );
    }
}
