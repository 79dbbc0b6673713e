//! The ranges that settings, attempt counts and payloads are checked against before anything
//! reaches a store or apalis. Every store holds every value in these ranges; a value outside is
//! refused by name, never wrapped, clamped in silence or left to overflow in a dependency.

use std::time::Duration;

use super::QueueError;

/// The most attempts a task may be given ([`Queue::push_with`](super::Queue::push_with)):
/// `i32::MAX` (2 147 483 647), the largest count every store holds (apalis-postgres stores
/// counts as `integer`; apalis-redis reads them as `u32`; SQLite stores `i64`). With the
/// default retry policy (delays doubling up to 10 minutes) it means "retry for as long as the
/// queue exists": pass it for a task that must never fail for good.
pub const MAX_ATTEMPTS: usize = i32::MAX as usize;

/// How deeply a payload's JSON may nest: what serde_json reads back (its recursion limit), so
/// a deeper payload could be stored but never decoded by a worker.
pub const MAX_DEPTH: usize = 127;

/// The default cap on one task's encoded payload: 16 MiB ([`Queue::with_payload_limit`]
/// changes it). A bigger payload belongs in a blob store, with its key in the task.
///
/// [`Queue::with_payload_limit`]: super::Queue::with_payload_limit
pub const DEFAULT_PAYLOAD_LIMIT: usize = 16 << 20;

/// The largest payload limit that can be set: 512 MiB, Redis' largest value.
pub const MAX_PAYLOAD_LIMIT: usize = 512 << 20;

/// One `Duration` setting's accepted range, inclusive (`max: None`: up to `Duration::MAX`,
/// where the code that uses it treats "too far to compute" as "never").
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurationRange {
    pub(crate) name: &'static str,
    pub(crate) min: Duration,
    pub(crate) max: Option<Duration>,
    /// Why the range is what it is (appended to the error).
    pub(crate) why: &'static str,
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

pub(crate) const POLL_INTERVAL: DurationRange = DurationRange {
    name: "poll_interval",
    min: Duration::from_millis(1),
    max: Some(HOUR),
    why: "an idle worker asks the queue this often",
};

pub(crate) const ORPHAN_TIMEOUT: DurationRange = DurationRange {
    name: "orphan_timeout",
    min: Duration::from_secs(5),
    max: Some(DAY),
    why: "heartbeats are counted in whole seconds, so a shorter timeout would take tasks from \
          live workers; a longer one leaves a dead worker's tasks unrun for more than a day",
};

pub(crate) const LEASE_WAIT: DurationRange = DurationRange {
    name: "lease_wait",
    min: Duration::from_nanos(1),
    max: None,
    why: "a claimed task waits this long for a lease before it is put back",
};

pub(crate) const LEASE_FOR: DurationRange = DurationRange {
    name: "lease_for",
    min: Duration::from_nanos(1),
    max: None,
    why: "each task's lease lasts this long (plus the manager's grace)",
};

pub(crate) const SHUTDOWN_TIMEOUT: DurationRange = DurationRange {
    name: "shutdown_timeout",
    min: Duration::ZERO,
    max: None,
    why: "stop lets running tasks finish this long",
};

pub(crate) const RETRY_DELAY: DurationRange = DurationRange {
    name: "retry delay",
    min: Duration::ZERO,
    max: Some(Duration::from_secs(365 * 24 * 3600)),
    why: "retry times are stored as seconds since 1970",
};

impl DurationRange {
    /// `Ok` if `d` is in range; otherwise an error naming the setting, the value and the range.
    pub(crate) fn check(&self, d: Duration) -> Result<(), QueueError> {
        let above = self.max.is_some_and(|max| d > max);
        if d >= self.min && !above {
            return Ok(());
        }
        let upper = match self.max {
            Some(max) => format!("{max:?}"),
            None => "Duration::MAX".to_owned(),
        };
        Err(QueueError::InvalidArgument(format!(
            "{} ({d:?}) must be between {:?} and {upper}: {}",
            self.name, self.min, self.why
        )))
    }
}

/// Checks an attempt count given at push.
pub(crate) fn check_attempts(max_attempts: usize) -> Result<u32, QueueError> {
    match u32::try_from(max_attempts) {
        Ok(n) if n >= 1 && max_attempts <= MAX_ATTEMPTS => Ok(n),
        _ => Err(QueueError::InvalidArgument(format!(
            "max_attempts ({max_attempts}) must be between 1 and {MAX_ATTEMPTS} (queue::MAX_ATTEMPTS, \
             the largest count every store holds; pass MAX_ATTEMPTS to retry for as long as the \
             queue exists)"
        ))),
    }
}

/// Checks a task's stored `max_attempts` (written by anyone, or by a version whose
/// [`MAX_ATTEMPTS`] was `u32::MAX`): 1 to `u32::MAX`, what the worker counts in.
pub(crate) fn check_stored_attempts(max_attempts: usize) -> Result<u32, String> {
    match u32::try_from(max_attempts) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "its stored max_attempts ({max_attempts}) is out of the range 1..={}",
            u32::MAX
        )),
    }
}

/// Checks a payload limit given to [`Queue::with_payload_limit`](super::Queue::with_payload_limit).
pub(crate) fn check_payload_limit(bytes: usize) -> Result<(), QueueError> {
    if (1..=MAX_PAYLOAD_LIMIT).contains(&bytes) {
        return Ok(());
    }
    Err(QueueError::InvalidArgument(format!(
        "payload limit ({bytes} bytes) must be between 1 and {MAX_PAYLOAD_LIMIT} (512 MiB, Redis' largest value)"
    )))
}

/// Checks a queue's name.
pub(crate) fn check_queue_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(QueueError::InvalidArgument(format!(
            "queue name {name:?}: it must be 1 to 200 bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<(), QueueError>) -> String {
        match r {
            Err(QueueError::InvalidArgument(t)) => t,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_duration_range_takes_its_bounds_and_refuses_beyond_them() {
        let r = ORPHAN_TIMEOUT;
        assert!(r.check(Duration::from_secs(5)).is_ok());
        assert!(r.check(DAY).is_ok());
        let low = refused(r.check(Duration::from_millis(4999)));
        assert!(
            low.starts_with("orphan_timeout (4.999s) must be between 5s and 86400s"),
            "{low}"
        );
        let high = refused(r.check(DAY + Duration::from_nanos(1)));
        assert!(high.contains("orphan_timeout"), "{high}");
        let max = refused(r.check(Duration::MAX));
        assert!(max.contains("18446744073709551615"), "{max}");
    }

    #[test]
    fn an_open_range_takes_duration_max() {
        assert!(SHUTDOWN_TIMEOUT.check(Duration::ZERO).is_ok());
        assert!(SHUTDOWN_TIMEOUT.check(Duration::MAX).is_ok());
        assert!(LEASE_WAIT.check(Duration::MAX).is_ok());
        let zero = refused(LEASE_WAIT.check(Duration::ZERO));
        assert!(
            zero.contains("lease_wait (0ns)") && zero.contains("Duration::MAX"),
            "{zero}"
        );
        let poll = refused(POLL_INTERVAL.check(Duration::ZERO));
        assert!(poll.contains("poll_interval"), "{poll}");
        assert!(POLL_INTERVAL.check(HOUR).is_ok());
        assert!(POLL_INTERVAL.check(HOUR + Duration::from_nanos(1)).is_err());
        assert!(RETRY_DELAY
            .check(Duration::from_secs(365 * 24 * 3600))
            .is_ok());
        assert!(RETRY_DELAY.check(Duration::MAX).is_err());
    }

    #[test]
    fn attempts_pushed_are_between_one_and_i32_max() {
        assert_eq!(check_attempts(1).unwrap(), 1);
        assert_eq!(check_attempts(MAX_ATTEMPTS).unwrap(), i32::MAX as u32);
        for bad in [0, MAX_ATTEMPTS + 1, u32::MAX as usize, usize::MAX] {
            let text = refused(check_attempts(bad).map(|_| ()));
            assert!(text.contains(&format!("max_attempts ({bad})")), "{text}");
            assert!(text.contains("MAX_ATTEMPTS"), "{text}");
        }
    }

    #[test]
    fn attempts_stored_are_read_up_to_u32_max() {
        assert_eq!(check_stored_attempts(1), Ok(1));
        assert_eq!(check_stored_attempts(u32::MAX as usize), Ok(u32::MAX));
        for bad in [0, u32::MAX as usize + 1, usize::MAX] {
            let text = check_stored_attempts(bad).unwrap_err();
            assert!(
                text.contains(&format!(
                    "max_attempts ({bad}) is out of the range 1..=4294967295"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn payload_limits_and_queue_names() {
        assert!(check_payload_limit(1).is_ok());
        assert!(check_payload_limit(MAX_PAYLOAD_LIMIT).is_ok());
        assert!(refused(check_payload_limit(0)).contains("payload limit (0 bytes)"));
        assert!(check_payload_limit(MAX_PAYLOAD_LIMIT + 1).is_err());
        assert!(check_queue_name("q").is_ok());
        assert!(check_queue_name(&"x".repeat(200)).is_ok());
        for bad in ["", "a\nb", &"x".repeat(201)] {
            assert!(refused(check_queue_name(bad)).contains("queue name"));
        }
    }
}
