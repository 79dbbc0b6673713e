//! A queue worker's metrics through the `metrics` facade (feature `metrics`; without it every
//! method here is empty): `leasepool_queue_tasks_total{queue, outcome}` and
//! `leasepool_queue_task_wait_seconds{queue}`. Registered when the worker is built, with the
//! recorder installed then (see docs/observability.md).

use std::time::{Duration, SystemTime};

use super::outcome::Counter;

#[cfg(feature = "metrics")]
use leasepool_actors::metrics::{QUEUE_TASKS, QUEUE_TASK_WAIT};

/// The `outcome` label of a run, as the worker's [`QueueStats`](super::QueueStats) counts it.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn label(counter: Counter) -> &'static str {
    match counter {
        Counter::Done => "done",
        Counter::Retried => "retried",
        Counter::Failed => "failed",
        Counter::PutBack => "put_back",
        Counter::HandedBack => "handed_back",
    }
}

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
const OUTCOMES: [Counter; 5] = [
    Counter::Done,
    Counter::Failed,
    Counter::Retried,
    Counter::PutBack,
    Counter::HandedBack,
];

/// How long a task waited for its run, started `now`: since it became due — the later of its
/// push (the time in its ULID id, the producer's clock) and its scheduled run (`run_at`,
/// seconds since 1970, the store's: a retry's time). `None` if neither is known; zero if the
/// clocks disagree the other way.
pub(crate) fn task_wait(id: &str, run_at: Option<u64>, now: SystemTime) -> Option<Duration> {
    let pushed = ulid::Ulid::from_string(id).ok().map(|u| u.timestamp_ms());
    let scheduled = run_at.map(|s| s.saturating_mul(1000));
    let due_ms = pushed.max(scheduled)?;
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis();
    let waited = now_ms.saturating_sub(u128::from(due_ms));
    Some(Duration::from_millis(
        u64::try_from(waited).unwrap_or(u64::MAX),
    ))
}

/// One worker's handles.
#[derive(Default)]
pub(crate) struct TaskMetrics {
    #[cfg(feature = "metrics")]
    on: Option<Box<Handles>>,
}

#[cfg(feature = "metrics")]
struct Handles {
    tasks: Vec<metrics::Counter>,
    wait: metrics::Histogram,
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
impl TaskMetrics {
    /// Registers the handles of queue `queue` with the recorder installed now.
    pub(crate) fn register(queue: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            metrics::describe_counter!(QUEUE_TASKS, "Queue tasks by how their run ended.");
            metrics::describe_histogram!(
                QUEUE_TASK_WAIT,
                metrics::Unit::Seconds,
                "Time from when a queue task became due to when it started on a lease."
            );
            let q = queue.to_owned();
            let tasks = OUTCOMES
                .iter()
                .map(|c| metrics::counter!(QUEUE_TASKS, "queue" => q.clone(), "outcome" => label(*c)))
                .collect();
            let wait = metrics::histogram!(QUEUE_TASK_WAIT, "queue" => q);
            Self {
                on: Some(Box::new(Handles { tasks, wait })),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self::default()
    }

    /// A run ended, counted as `counter`.
    pub(crate) fn task(&self, counter: Counter) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            h.tasks[counter as usize].increment(1);
        }
    }

    /// A task started on a lease after waiting `waited`.
    pub(crate) fn started(&self, waited: Option<Duration>) {
        #[cfg(feature = "metrics")]
        if let (Some(h), Some(waited)) = (&self.on, waited) {
            h.wait.record(waited.as_secs_f64());
        }
    }

    /// Whether anything is recorded (callers skip reading the clock otherwise).
    pub(crate) fn enabled(&self) -> bool {
        #[cfg(feature = "metrics")]
        return self.on.is_some();
        #[cfg(not(feature = "metrics"))]
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_ms(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn id_at(ms: u64) -> String {
        ulid::Ulid::from_parts(ms, 7).to_string()
    }

    #[test]
    fn a_task_waits_from_its_push_or_its_scheduled_time_whichever_is_later() {
        let pushed = 1_700_000_000_250;
        // Due at its push: 1.5 s.
        assert_eq!(
            task_wait(&id_at(pushed), None, at_ms(pushed + 1500)),
            Some(Duration::from_millis(1500))
        );
        // A retry scheduled later than the push: from the retry time.
        assert_eq!(
            task_wait(
                &id_at(pushed),
                Some(1_700_000_010),
                at_ms(1_700_000_010_400)
            ),
            Some(Duration::from_millis(400))
        );
        // A run_at before the push (a store that stamps the push second): the push wins.
        assert_eq!(
            task_wait(&id_at(pushed), Some(1_700_000_000), at_ms(pushed + 10)),
            Some(Duration::from_millis(10))
        );
        // Clocks the other way: zero, not a negative or a panic.
        assert_eq!(
            task_wait(&id_at(pushed), None, at_ms(pushed - 5)),
            Some(Duration::ZERO)
        );
        // An id that is no ULID: the scheduled time alone, or nothing.
        assert_eq!(
            task_wait("not-a-ulid", Some(10), at_ms(12_000)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(task_wait("not-a-ulid", None, at_ms(12_000)), None);
    }

    #[test]
    fn every_counter_has_its_own_label_at_its_index() {
        for (i, c) in OUTCOMES.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        let mut labels: Vec<_> = OUTCOMES.iter().map(|c| label(*c)).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), OUTCOMES.len());
    }
}
