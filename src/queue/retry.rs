//! How long a failed task waits before its next attempt: one policy for every store.

use std::time::Duration;

use super::limits::RETRY_DELAY;
use super::QueueError;

/// How long a task that failed an attempt waits before the next one: exponential backoff with
/// jitter, capped. Set it for a worker with
/// [`QueueWorkerBuilder::retry`](super::QueueWorkerBuilder::retry), or for one task with
/// [`PushOptions::retry`](super::PushOptions::retry) (which wins).
///
/// The default waits about 1 s after the first failure, then 2 s, 4 s, … up to 10 minutes,
/// each delay drawn between half and all of that (so that tasks failed by one outage do not all
/// come back at the same instant): 25 attempts span about 2½ hours. The same policy applies to
/// every retried attempt: the job's `Err` or panic, a crashed worker child, a lease revoked at
/// its hard expiry. Put-backs and hand-backs are not attempts and do not wait.
///
/// The stores keep run times in whole seconds, so a delay is rounded up to the next second
/// boundary of the store's clock (a delay under a second means "from the next second on").
///
/// ```
/// use std::time::Duration;
/// use leasepool::queue::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(Duration::from_secs(2), Duration::from_secs(60));
/// assert_eq!(policy.ceiling(1), Duration::from_secs(2));
/// assert_eq!(policy.ceiling(3), Duration::from_secs(8));
/// assert_eq!(policy.ceiling(10), Duration::from_secs(60));
/// let fixed = RetryPolicy::fixed(Duration::from_secs(5)).without_jitter();
/// assert_eq!(fixed.ceiling(7), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    first: Duration,
    max: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(600))
    }
}

impl RetryPolicy {
    /// The first retry waits `first`, each next one twice as long as the last, never more
    /// than `max`; with jitter. Both at most 365 days, and `first ≤ max` (checked where the
    /// policy is used: the builder's `build`, or the push).
    pub fn exponential(first: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            first,
            max,
            jitter: true,
        }
    }

    /// Every retry waits `delay` (with jitter unless [`without_jitter`](Self::without_jitter)).
    pub fn fixed(delay: Duration) -> RetryPolicy {
        RetryPolicy::exponential(delay, delay)
    }

    /// Retries at once (tests, or work that fails for reasons that do not pass with time).
    pub fn immediate() -> RetryPolicy {
        RetryPolicy::fixed(Duration::ZERO)
    }

    /// Each delay exactly its [`ceiling`](Self::ceiling), without jitter.
    pub fn without_jitter(mut self) -> RetryPolicy {
        self.jitter = false;
        self
    }

    /// The longest wait after `failed` failed attempts (`failed ≥ 1`; 0 counts as 1). With
    /// jitter the actual wait is drawn between half of it and all of it.
    pub fn ceiling(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1);
        let grown = if doublings >= 64 {
            None
        } else {
            self.first.as_nanos().checked_mul(1_u128 << doublings)
        };
        let max = self.max.as_nanos();
        let nanos = grown.map_or(max, |g| g.min(max));
        duration_from_nanos(nanos)
    }

    /// The wait after `failed` failed attempts, `random` drawing the jitter.
    pub(crate) fn delay(&self, failed: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(failed).as_nanos();
        if !self.jitter || ceiling == 0 {
            return duration_from_nanos(ceiling);
        }
        let half = ceiling / 2;
        duration_from_nanos(half + u128::from(random) % (ceiling - half + 1))
    }

    pub(crate) fn check(&self) -> Result<(), QueueError> {
        RETRY_DELAY.check(self.first)?;
        RETRY_DELAY.check(self.max)?;
        if self.first > self.max {
            return Err(QueueError::InvalidArgument(format!(
                "retry policy: the first delay ({:?}) is longer than the longest ({:?})",
                self.first, self.max
            )));
        }
        Ok(())
    }

    /// The policy as stored with a task (`v1:<first ms>:<max ms>:<jitter 0|1>`).
    pub(crate) fn to_meta(self) -> String {
        format!(
            "v1:{}:{}:{}",
            self.first.as_millis(),
            self.max.as_millis(),
            u8::from(self.jitter)
        )
    }

    /// A policy stored with a task; `None` if the text is not one (written by something
    /// else): the worker's policy applies then.
    pub(crate) fn from_meta(text: &str) -> Option<RetryPolicy> {
        let mut parts = text.split(':');
        if parts.next()? != "v1" {
            return None;
        }
        let first = Duration::from_millis(parts.next()?.parse().ok()?);
        let max = Duration::from_millis(parts.next()?.parse().ok()?);
        let jitter = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let policy = RetryPolicy { first, max, jitter };
        (parts.next().is_none() && policy.check().is_ok()).then_some(policy)
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// A random number for jitter (no extra dependency: std's hasher keys are random per process,
/// and a counter makes every draw different).
pub(crate) fn random() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(DRAWS.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_default_doubles_from_a_second_to_ten_minutes() {
        let p = RetryPolicy::default();
        let ceilings: Vec<u64> = (1..=12).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(p.ceiling(0), S);
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(600));
        // 25 attempts: 24 waits of at most 1+2+...+512 + 14 × 600 s.
        let total: u64 = (1..25).map(|n| p.ceiling(n).as_secs()).sum();
        assert_eq!(total, 1023 + 14 * 600);
    }

    #[test]
    fn jitter_stays_between_half_and_the_ceiling() {
        let p = RetryPolicy::exponential(S, Duration::from_secs(64));
        for n in 1..10 {
            let c = p.ceiling(n);
            for r in [0, 1, 7, u64::MAX / 3, u64::MAX] {
                let d = p.delay(n, r);
                assert!(
                    d >= c / 2 && d <= c,
                    "attempt {n}, random {r}: {d:?} not in [{:?}, {c:?}]",
                    c / 2
                );
            }
            assert_eq!(p.delay(n, 0), c / 2);
        }
        // Without jitter: exactly the ceiling, whatever the draw.
        let exact = p.without_jitter();
        assert_eq!(exact.delay(3, 12345), Duration::from_secs(4));
        assert_eq!(RetryPolicy::immediate().delay(5, 99), Duration::ZERO);
        // Draws differ.
        assert_ne!(random(), random());
    }

    #[test]
    fn huge_settings_saturate_instead_of_overflowing() {
        let p = RetryPolicy::exponential(Duration::MAX, Duration::MAX);
        assert_eq!(p.ceiling(1), Duration::MAX);
        assert_eq!(p.ceiling(200), Duration::MAX);
        assert!(p.delay(200, u64::MAX) <= Duration::MAX);
        assert!(p.check().is_err());
    }

    #[test]
    fn check_names_what_is_wrong() {
        assert!(RetryPolicy::default().check().is_ok());
        assert!(RetryPolicy::immediate().check().is_ok());
        let backwards = RetryPolicy::exponential(Duration::from_secs(9), S)
            .check()
            .unwrap_err();
        assert!(
            backwards
                .to_string()
                .contains("first delay (9s) is longer than the longest (1s)"),
            "{backwards}"
        );
        let long = RetryPolicy::fixed(Duration::from_secs(366 * 24 * 3600))
            .check()
            .unwrap_err();
        assert!(long.to_string().contains("retry delay"), "{long}");
    }

    #[test]
    fn a_policy_survives_the_store_and_junk_is_ignored() {
        for p in [
            RetryPolicy::default(),
            RetryPolicy::immediate().without_jitter(),
            RetryPolicy::exponential(Duration::from_millis(250), Duration::from_secs(90)),
        ] {
            assert_eq!(RetryPolicy::from_meta(&p.to_meta()), Some(p));
        }
        assert_eq!(RetryPolicy::default().to_meta(), "v1:1000:600000:1");
        for junk in [
            "",
            "v1",
            "v2:1:2:1",
            "v1:a:2:1",
            "v1:1:2:3",
            "v1:5:2:1",
            "v1:1:2:1:9",
            "v1:1:99999999999999999:1",
        ] {
            assert_eq!(RetryPolicy::from_meta(junk), None, "{junk:?}");
        }
    }
}
