//! [`LeaseConfig`]: how a route's lease is acquired, and from which manager.

use std::time::Duration;

use crate::{Acquire, LeaseError, LeaseManager};

/// How a request's lease is acquired. With actix-web, `Leased` and `LeasedAfter` find it in
/// `app_data` (`App::new().app_data(LeaseConfig::…)`, plain or in a `web::Data`); with tower, a
/// `LeaseLayer` or `ManagerLayer` is given one (`.config(…)`). Without one, requests wait at
/// most 5 s for a lease, hold it for the manager's `default_lease`, and 503s carry the
/// process-wide `Retry-After` hint (`set_retry_after`, default 1 s).
///
/// *Available with the cargo feature `web` or `tower`.*
///
/// ```
/// use std::time::Duration;
/// use leasepool::web::LeaseConfig;
///
/// // Wait up to 500 ms; hold the lease at most 30 s; tell shed clients to come back in 2 s.
/// let config = LeaseConfig::timeout(Duration::from_millis(500))
///     .lease_for(Duration::from_secs(30))
///     .retry_after(Duration::from_secs(2));
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub(crate) wait: Wait,
    pub(crate) lease_for: Option<Duration>,
    pub(crate) retry_after: Option<u64>,
    /// Estimate the hint, within these whole seconds (see [`LeaseConfig::retry_after_estimated`]).
    pub(crate) estimate: Option<(u64, u64)>,
    pub(crate) manager: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Timeout(Duration),
    NoWait,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            wait: Wait::Timeout(Duration::from_secs(5)),
            lease_for: None,
            retry_after: None,
            estimate: None,
            manager: None,
        }
    }
}

impl LeaseConfig {
    /// Wait at most `d` for a lease, then answer 503. Choose it below the request timeout of
    /// whatever calls you: actix-web does not cancel a handler whose client hung up, so a
    /// vanished client keeps its place in the queue until this passes.
    pub fn timeout(d: Duration) -> Self {
        Self {
            wait: Wait::Timeout(d),
            ..Self::default()
        }
    }

    /// Never wait: answer 503 at once when no pool is free.
    pub fn no_wait() -> Self {
        Self {
            wait: Wait::NoWait,
            ..Self::default()
        }
    }

    /// Soft lifetime of each request's lease (default: the manager's `default_lease`).
    pub fn lease_for(mut self, d: Duration) -> Self {
        self.lease_for = Some(d);
        self
    }

    /// The `Retry-After` hint of this route's 503s (whole seconds, at least 1), instead of the
    /// process-wide `set_retry_after` — for two services in one process, or routes of
    /// different capacity.
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = Some(hint.as_secs().max(1));
        self
    }

    /// The `Retry-After` of this route's 503s is computed from what the manager observes
    /// ([`LeaseManager::estimated_wait`](crate::LeaseManager::estimated_wait): recent hold
    /// times, the live leases' ages, the acquirers ahead, the pools in service), rounded up to
    /// whole seconds and clamped to `min ..= max` (whole seconds; `min` at least 1, `max` at
    /// least `min`). While the manager has no basis yet (no lease ended since the first
    /// estimate) the fixed hint is sent ([`retry_after`](Self::retry_after) or
    /// `set_retry_after`). A `LeaseError` a handler returns itself (a job that `NeverRan`)
    /// does not know its manager: it carries the fixed hint.
    ///
    /// ```
    /// use std::time::Duration;
    /// use leasepool::web::LeaseConfig;
    ///
    /// // Shed clients come back when a pool should be free: between 1 s and 30 s from now.
    /// let config = LeaseConfig::no_wait()
    ///     .retry_after_estimated(Duration::from_secs(1), Duration::from_secs(30));
    /// # let _ = config;
    /// ```
    pub fn retry_after_estimated(mut self, min: Duration, max: Duration) -> Self {
        let min = min.as_secs().max(1);
        self.estimate = Some((min, max.as_secs().max(min)));
        self
    }

    /// The route leases from the manager named `name` (its `name_prefix`) — with actix-web
    /// found in a `Managers` registry in `app_data` or as the app's only manager; with tower,
    /// checked against the layer's manager. A route whose manager is not there answers 500
    /// naming what it wanted and what it found — never another manager. Name the manager of
    /// every route in an app with more than one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use leasepool::web::LeaseConfig;
    ///
    /// // This scope's jobs run in worker processes, on the manager named "sandbox".
    /// let config = LeaseConfig::timeout(Duration::from_secs(1)).manager("sandbox");
    /// # let _ = config;
    /// ```
    pub fn manager(mut self, name: impl Into<String>) -> Self {
        self.manager = Some(name.into());
        self
    }
}

impl LeaseConfig {
    /// The acquire this config asks of `manager` for a request of owner label `owner`.
    pub(crate) fn acquire<S: 'static>(
        &self,
        manager: &LeaseManager<S>,
        owner: String,
    ) -> Acquire<'static, S> {
        let acquire = manager.acquire_owned().owner(owner);
        let acquire = match self.wait {
            Wait::Timeout(d) => acquire.timeout(d),
            Wait::NoWait => acquire.no_wait(),
        };
        match self.lease_for {
            Some(d) => acquire.lease_for(d),
            None => acquire,
        }
    }

    /// The `Retry-After` seconds a failed acquire's answer carries: estimated from `manager`
    /// for overload when the route asks for it, else the route's fixed hint (`None`: the
    /// process-wide one).
    pub(crate) fn hint<S: 'static>(
        &self,
        error: &LeaseError,
        manager: &LeaseManager<S>,
    ) -> Option<u64> {
        match self.estimate {
            Some(range) if error.is_overload() => {
                let fixed = self
                    .retry_after
                    .unwrap_or_else(leasepool_actors::retry_after_secs);
                Some(hint_secs(manager.estimated_wait(), range, fixed))
            }
            _ => self.retry_after,
        }
    }
}

/// The `Retry-After` of a 503, in whole seconds: the estimate rounded up and clamped to
/// `min ..= max` when there is one, else `fixed`.
pub(crate) fn hint_secs(estimate: Option<Duration>, (min, max): (u64, u64), fixed: u64) -> u64 {
    match estimate {
        Some(wait) => {
            let secs = wait
                .as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0));
            secs.clamp(min, max)
        }
        None => fixed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_is_rounded_up_and_clamped_and_none_falls_back() {
        let ms = Duration::from_millis;
        assert_eq!(hint_secs(Some(ms(1)), (1, 30), 5), 1);
        assert_eq!(hint_secs(Some(ms(2001)), (1, 30), 5), 3);
        assert_eq!(hint_secs(Some(ms(3000)), (1, 30), 5), 3);
        assert_eq!(hint_secs(Some(Duration::ZERO), (2, 30), 5), 2);
        assert_eq!(hint_secs(Some(Duration::from_secs(600)), (1, 30), 5), 30);
        assert_eq!(hint_secs(None, (1, 30), 5), 5);
    }

    #[test]
    fn the_range_is_whole_seconds_at_least_one_and_ordered() {
        let c = LeaseConfig::no_wait()
            .retry_after_estimated(Duration::from_millis(200), Duration::from_millis(500));
        assert_eq!(c.estimate, Some((1, 1)));
        let c = LeaseConfig::no_wait()
            .retry_after_estimated(Duration::from_secs(10), Duration::from_secs(2));
        assert_eq!(c.estimate, Some((10, 10)));
    }
}
