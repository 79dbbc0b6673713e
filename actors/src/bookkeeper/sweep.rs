//! When the supervisor starts lease actors. A lease actor holds one thing, its lease's
//! hard-expiry timer, so a lease needs it only by its hard expiry. The bookkeeper asks the
//! supervisor for a *sweep* — start the actors of the leases made since the last one — due
//! [`ACTOR_DELAY`] after a lease is made, or at its hard expiry if that comes first, and asks
//! again only for a lease due before the sweep already asked for. A lease that ends before its
//! sweep (a request's lease usually lives milliseconds) never gets an actor, and costs the host
//! thread nothing: no start, no stop, no wake-up.

use std::time::{Duration, Instant};

/// How long a new lease may go without its actor (never past its hard expiry).
pub(crate) const ACTOR_DELAY: Duration = Duration::from_millis(50);

/// When the sweep that starts the actor of a lease made at `now`, hard-expiring at `hard`,
/// must happen at the latest.
pub(crate) fn due(now: Instant, hard: Instant) -> Instant {
    now.checked_add(ACTOR_DELAY).map_or(hard, |at| at.min(hard))
}

/// Whether a sweep due at `due` must be asked for at `now`, given the earliest one asked for
/// and not yet done (`pending`): if there is none, if it comes later, or if it is overdue by
/// [`ACTOR_DELAY`] — a request lost on the way (a panic in the supervisor's handler) must not
/// leave every later lease of the run without its actor, and so without hard expiry.
pub(crate) fn must_ask(pending: Option<Instant>, due: Instant, now: Instant) -> bool {
    pending.is_none_or(|pending| {
        due < pending
            || pending
                .checked_add(ACTOR_DELAY)
                .is_none_or(|late| late <= now)
    })
}

/// `from + by`; a lifetime too long to represent is as good as forever (a century). Never
/// panics on user input.
pub(super) fn later(from: Instant, by: Duration) -> Instant {
    const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    from.checked_add(by)
        .or_else(|| from.checked_add(FOREVER))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_swept_after_the_delay_or_at_its_hard_expiry() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        assert_eq!(due(now, far), now + ACTOR_DELAY);
        let soon = now + ACTOR_DELAY / 2;
        assert_eq!(due(now, soon), soon, "the hard expiry comes first");
        assert_eq!(due(now, now), now, "already due");
    }

    #[test]
    fn a_sweep_is_asked_for_once_unless_a_lease_is_due_sooner() {
        let now = Instant::now();
        let at = now + ACTOR_DELAY;
        assert!(must_ask(None, at, now), "none pending");
        assert!(
            !must_ask(Some(at), at, now),
            "the pending one sweeps it in time"
        );
        assert!(
            !must_ask(Some(now), at, now),
            "an earlier one sweeps it too"
        );
        assert!(must_ask(Some(at), now, now), "due before the pending one");
    }

    #[test]
    fn a_sweep_overdue_by_the_delay_counts_as_lost() {
        let asked = Instant::now();
        let due = asked + ACTOR_DELAY;
        let later_lease = due + ACTOR_DELAY;
        let just_late = due + ACTOR_DELAY / 2;
        assert!(
            !must_ask(Some(due), later_lease, just_late),
            "a little late: still coming"
        );
        let lost = due + ACTOR_DELAY;
        assert!(
            must_ask(Some(due), lost + ACTOR_DELAY, lost),
            "overdue by the delay: ask again"
        );
    }
}
