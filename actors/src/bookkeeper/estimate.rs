//! How long until a pool is free for a new acquirer — the basis of a computed `Retry-After` —
//! estimated from what the manager observes: how long recent leases were held, how old the live
//! ones are, how many acquirers wait ahead, how many pools serve. A pure function of those
//! figures, unit-tested below.

use std::time::Duration;

/// Weight of the newest hold time in the running mean (an exponentially weighted mean: the
/// last ~10 leases count most).
pub(crate) const HOLD_WEIGHT: f64 = 0.2;

/// The running mean of hold times with one more lease held `held`.
pub(crate) fn mean_hold(mean: Option<Duration>, held: Duration) -> Duration {
    match mean {
        None => held,
        Some(mean) => mean.mul_f64(1.0 - HOLD_WEIGHT) + held.mul_f64(HOLD_WEIGHT),
    }
}

/// What the estimate sees.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    /// The running mean of recent hold times.
    pub(crate) hold: Duration,
    /// The age of each live lease (one per leased pool).
    pub(crate) ages: &'a [Duration],
    /// Idle pools.
    pub(crate) available: usize,
    /// Acquirers queued now.
    pub(crate) waiting: usize,
}

/// How long a new acquirer would wait for a pool: zero if one is free for it; otherwise the
/// time until the release that serves it — the leases end in order of their expected
/// remaining time (the mean hold minus their age, at least zero), and the `k`-th acquirer
/// beyond the pools in service waits `k / n` more whole holds. `None` without a live lease to
/// go by (no pool in service).
pub(crate) fn until_free(o: Observed<'_>) -> Option<Duration> {
    if o.available > o.waiting {
        return Some(Duration::ZERO);
    }
    if o.ages.is_empty() {
        return None;
    }
    let mut remaining: Vec<Duration> = o.ages.iter().map(|a| o.hold.saturating_sub(*a)).collect();
    remaining.sort_unstable();
    // The new acquirer is served by the (ahead + 1)-th release.
    let ahead = o.waiting - o.available;
    let n = remaining.len();
    let rounds = u32::try_from(ahead / n).unwrap_or(u32::MAX);
    Some(remaining[ahead % n].saturating_add(o.hold.saturating_mul(rounds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_free_pool_means_no_wait() {
        let o = Observed {
            hold: ms(500),
            ages: &[ms(100)],
            available: 1,
            waiting: 0,
        };
        assert_eq!(until_free(o), Some(Duration::ZERO));
    }

    #[test]
    fn the_first_waiter_waits_for_the_lease_expected_to_end_first() {
        let o = Observed {
            hold: ms(1000),
            ages: &[ms(200), ms(900), ms(500)],
            available: 0,
            waiting: 0,
        };
        assert_eq!(until_free(o), Some(ms(100)));
        // Two ahead: the third release.
        assert_eq!(until_free(Observed { waiting: 2, ..o }), Some(ms(800)));
    }

    #[test]
    fn waiters_beyond_the_pools_wait_whole_rounds() {
        let o = Observed {
            hold: ms(1000),
            ages: &[ms(400), ms(600)],
            available: 0,
            waiting: 5,
        };
        // Releases at 400, 600, then every pool again after a whole hold: 1 400, 1 600,
        // 2 400, 2 600. Five ahead: the newcomer is served by the sixth, at 600 + 2 * 1 000.
        assert_eq!(until_free(o), Some(ms(2600)));
        // Four ahead: the fifth, at 400 + 2 * 1 000.
        assert_eq!(until_free(Observed { waiting: 4, ..o }), Some(ms(2400)));
    }

    #[test]
    fn an_overdue_lease_counts_as_ending_now_and_no_lease_is_no_basis() {
        let o = Observed {
            hold: ms(300),
            ages: &[ms(900)],
            available: 0,
            waiting: 0,
        };
        assert_eq!(until_free(o), Some(Duration::ZERO));
        assert_eq!(until_free(Observed { ages: &[], ..o }), None);
        // Queued acquirers ahead of idle pools (they are being served): still a wait.
        let busy = Observed {
            available: 1,
            waiting: 2,
            ..o
        };
        assert_eq!(until_free(busy), Some(ms(300)));
    }

    #[test]
    fn the_mean_follows_recent_holds() {
        let mut mean = None;
        for _ in 0..40 {
            mean = Some(mean_hold(mean, ms(1000)));
        }
        assert_eq!(mean, Some(ms(1000)));
        for _ in 0..40 {
            mean = Some(mean_hold(mean, ms(200)));
        }
        let m = mean.unwrap();
        assert!(m > ms(199) && m < ms(201), "{m:?}");
        assert_eq!(mean_hold(None, ms(7)), ms(7));
        assert_eq!(mean_hold(Some(ms(1000)), ms(0)), ms(800));
    }
}
