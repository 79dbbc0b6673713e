//! Unit tests of the books (the property test over random transition sequences is in
//! `properties.rs`). The books are pure, so these need no runtime, no threads and no timers:
//! pools carry their number as their handle, waiters their arrival number, and leases a number
//! as their payload where a test attaches one.

use super::{Acquired, Books, Effect, Limits, StartOutcome, WaitMode, WaiterId};
use crate::error::LeaseError;
use crate::lease_state::Revocation;
use crate::stats::{LeaseId, PoolId};

pub(super) type TestBooks = Books<u64, WaiterId, u64>;
pub(super) type Fx = Vec<Effect<u64, WaiterId, u64>>;

pub(super) fn limits(max_pools: usize, min_pools: usize, max_waiters: usize) -> Limits {
    Limits {
        max_pools,
        min_pools,
        max_waiters,
    }
}

/// Running books whose `n` pools are spawned and ready (idle).
fn with_ready_pools(max_pools: usize, n: usize) -> TestBooks {
    let mut books = TestBooks::new(limits(max_pools, n, 100));
    books.begin_run(1);
    let mut fx = Fx::new();
    books.set_desired(n, &mut fx);
    for pool in created(&fx) {
        assert!(books.pool_spawned(pool, 1, pool.get()));
        books.pool_ready(pool, &mut Fx::new());
    }
    books.check().unwrap();
    books
}

fn created(fx: &Fx) -> Vec<PoolId> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::CreatePool(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn queue(books: &mut TestBooks, mode: WaitMode, fx: &mut Fx) -> Result<Acquired<u64>, LeaseError> {
    let id = books.next_waiter;
    books.acquire(mode, || id, fx)
}

fn now_lease(outcome: Result<Acquired<u64>, LeaseError>) -> (LeaseId, PoolId) {
    match outcome {
        Ok(Acquired::Now { lease, pool, .. }) => (lease, pool),
        other => panic!("expected a lease at once, got {other:?}"),
    }
}

fn grants(fx: &Fx) -> Vec<(WaiterId, LeaseId, PoolId)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Grant {
                waiter_id,
                waiter,
                lease,
                pool,
                ..
            } => {
                assert_eq!(waiter_id, waiter, "a grant names the waiter it answers");
                Some((*waiter, *lease, *pool))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn stopped_books_refuse_and_a_run_creates_the_target() {
    let mut books = TestBooks::new(limits(3, 2, 10));
    let mut fx = Fx::new();
    assert_eq!(
        queue(&mut books, WaitMode::Forever, &mut fx),
        Err(LeaseError::NotStarted)
    );
    books.begin_run(7);
    books.set_desired(2, &mut fx);
    assert_eq!(created(&fx).len(), 2);
    assert_eq!(books.start_outcome(), StartOutcome::Pending);
    let pool = created(&fx)[0];
    assert!(
        !books.pool_spawned(pool, 6, 0),
        "another run's pool is refused"
    );
    assert!(books.pool_spawned(pool, 7, 0));
    books.check().unwrap();
}

#[test]
fn a_starting_pool_is_never_handed_out_until_ready() {
    let mut books = TestBooks::new(limits(1, 1, 10));
    books.begin_run(1);
    let mut fx = Fx::new();
    books.set_desired(1, &mut fx);
    let pool = created(&fx)[0];
    books.pool_spawned(pool, 1, 9);
    let mut fx = Fx::new();
    assert_eq!(
        queue(&mut books, WaitMode::Forever, &mut fx),
        Ok(Acquired::Queued(0))
    );
    assert!(grants(&fx).is_empty());
    books.pool_ready(pool, &mut fx);
    assert_eq!(grants(&fx), vec![(0, LeaseId(1), pool)]);
    assert_eq!(books.start_outcome(), StartOutcome::Serving);
    books.check().unwrap();
}

#[test]
fn waiters_are_served_first_come_first_served() {
    let mut books = with_ready_pools(1, 1);
    let mut fx = Fx::new();
    let (first, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    for expected in 0..3 {
        assert_eq!(
            queue(&mut books, WaitMode::Forever, &mut fx),
            Ok(Acquired::Queued(expected))
        );
    }
    let mut served = Vec::new();
    let mut holder = first;
    for _ in 0..3 {
        let mut fx = Fx::new();
        assert!(books.release(holder, &mut fx));
        let g = grants(&fx);
        assert_eq!(g.len(), 1);
        served.push(g[0].0);
        holder = g[0].1;
        books.check().unwrap();
    }
    assert_eq!(served, vec![0, 1, 2]);
    assert_eq!(books.stats().counts.acquired_after_wait, 3);
}

#[test]
fn no_wait_and_max_waiters_refuse_when_nothing_can_come() {
    let mut books = TestBooks::new(limits(1, 1, 1));
    books.begin_run(1);
    let mut fx = Fx::new();
    books.set_desired(1, &mut fx);
    let pool = created(&fx)[0];
    books.pool_spawned(pool, 1, 0);
    books.pool_ready(pool, &mut fx);
    now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    assert_eq!(
        queue(&mut books, WaitMode::NoWait, &mut fx),
        Err(LeaseError::Unavailable)
    );
    assert_eq!(
        queue(&mut books, WaitMode::Forever, &mut fx),
        Ok(Acquired::Queued(0))
    );
    assert_eq!(
        queue(&mut books, WaitMode::Forever, &mut fx),
        Err(LeaseError::Unavailable)
    );
    assert_eq!(books.stats().counts.rejected, 2);
    assert_eq!(books.cancel_waiter(0, true), Some(0));
    assert_eq!(books.cancel_waiter(0, true), None, "a waiter leaves once");
    assert_eq!(books.stats().counts.timed_out, 1);
    books.check().unwrap();
}

#[test]
fn a_pool_above_the_target_is_retired_on_release_and_a_revoked_one_always() {
    let mut books = with_ready_pools(2, 1);
    let mut fx = Fx::new();
    let (a, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    // A second acquire grows capacity beyond the target of 1.
    assert_eq!(
        queue(&mut books, WaitMode::Forever, &mut fx),
        Ok(Acquired::Queued(0))
    );
    let grown = created(&fx)[0];
    books.pool_spawned(grown, 1, 5);
    let mut fx = Fx::new();
    books.pool_ready(grown, &mut fx);
    let b = grants(&fx)[0].1;
    let mut fx = Fx::new();
    books.release(b, &mut fx);
    assert!(
        fx.contains(&Effect::RetirePool(grown)),
        "above target: retired, {fx:?}"
    );
    let mut fx = Fx::new();
    assert!(books.revoke(a, Revocation::Expired, &mut fx));
    assert!(fx.contains(&Effect::Revoke {
        lease: a,
        why: Revocation::Expired,
        payload: None
    }));
    assert_eq!(
        created(&fx).len(),
        1,
        "capacity rebuilt to the target: {fx:?}"
    );
    assert!(
        !books.revoke(a, Revocation::Expired, &mut Fx::new()),
        "once"
    );
    books.check().unwrap();
}

#[test]
fn when_no_pool_can_serve_acquirers_are_told_why_and_recovery_serves_again() {
    let mut books = with_ready_pools(1, 1);
    let pool = books.stats().pools[0];
    let mut fx = Fx::new();
    let (lease, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    assert_eq!(
        queue(&mut books, WaitMode::Forever, &mut fx),
        Ok(Acquired::Queued(0))
    );
    let mut fx = Fx::new();
    books.pool_unhealthy(pool, "db down".into(), &mut fx);
    assert_eq!(
        fx,
        vec![Effect::Refuse {
            waiter_id: 0,
            waiter: 0,
            error: LeaseError::NoHealthyPool("db down".into())
        }]
    );
    books.release(lease, &mut Fx::new()); // parked, not idle
    assert_eq!(books.stats().available, 0);
    assert_eq!(
        queue(&mut books, WaitMode::NoWait, &mut Fx::new()),
        Err(LeaseError::NoHealthyPool("db down".into()))
    );
    assert_eq!(
        books.start_outcome(),
        StartOutcome::Failed("db down".into())
    );
    books.pool_ready(pool, &mut Fx::new());
    now_lease(queue(&mut books, WaitMode::NoWait, &mut Fx::new()));
    books.check().unwrap();
}

#[test]
fn a_dead_pool_revokes_its_lease_and_is_replaced() {
    let mut books = with_ready_pools(1, 1);
    let mut fx = Fx::new();
    let (lease, pool) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    let mut fx = Fx::new();
    books.pool_died(pool, &mut fx);
    assert!(fx.contains(&Effect::Revoke {
        lease,
        why: Revocation::Lost,
        payload: None
    }));
    assert_eq!(created(&fx).len(), 1);
    assert!(
        !books.release(lease, &mut Fx::new()),
        "the lease ended with its pool"
    );
    books.check().unwrap();
}

#[test]
fn a_sweep_starts_actors_only_for_leases_still_live() {
    let mut books = with_ready_pools(3, 3);
    let mut fx = Fx::new();
    let (a, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    let (b, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    books.release(b, &mut Fx::new());
    assert_eq!(
        books.take_unswept(),
        vec![a],
        "b ended before the sweep: no actor"
    );
    let mut fx = Fx::new();
    books.release(a, &mut fx);
    assert!(fx.contains(&Effect::LeaseEnded {
        lease: a,
        had_actor: true,
        payload: None
    }));
    let (c, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut Fx::new()));
    assert_eq!(
        books.take_unswept(),
        vec![c],
        "a new batch: only the new lease"
    );
    assert_eq!(books.take_unswept(), vec![], "each lease is swept once");
}

#[test]
fn ending_the_run_answers_everyone_and_leaves_nothing() {
    let mut books = with_ready_pools(1, 1);
    let mut fx = Fx::new();
    let (lease, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    assert!(books.attach(lease, 7));
    queue(&mut books, WaitMode::Forever, &mut fx).unwrap();
    let mut fx = Fx::new();
    assert!(books.end_run(&mut fx));
    assert!(fx.contains(&Effect::Refuse {
        waiter_id: 0,
        waiter: 0,
        error: LeaseError::Stopped
    }));
    assert!(fx.contains(&Effect::Revoke {
        lease,
        why: Revocation::Stopped,
        payload: Some(7)
    }));
    assert!(fx.contains(&Effect::LeaseEnded {
        lease,
        had_actor: false,
        payload: Some(7)
    }));
    assert_eq!(books.payloads().count(), 0);
    assert_eq!(books.entries(), 0);
    assert!(!books.end_run(&mut Fx::new()), "once");
    books.check().unwrap();
}

#[test]
fn a_lease_s_payload_comes_back_when_it_ends_or_is_revoked() {
    let mut books = with_ready_pools(3, 3);
    let mut fx = Fx::new();
    let (a, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    let (b, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    let (c, c_pool) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    assert!(books.attach(a, 10));
    assert!(books.attach(b, 20));
    assert!(books.attach(c, 30));
    assert_eq!(books.payload(a), Some(&10));
    let mut live: Vec<u64> = books.payloads().copied().collect();
    live.sort_unstable();
    assert_eq!(live, vec![10, 20, 30]);

    let mut fx = Fx::new();
    assert!(books.release(a, &mut fx));
    let ended = Effect::LeaseEnded {
        lease: a,
        had_actor: false,
        payload: Some(10),
    };
    assert!(fx.contains(&ended), "{fx:?}");
    assert!(!books.attach(a, 11), "an ended lease takes no payload");
    assert_eq!(books.payload(a), None);

    let mut fx = Fx::new();
    assert!(books.revoke(b, Revocation::Expired, &mut fx));
    for effect in [
        Effect::Revoke {
            lease: b,
            why: Revocation::Expired,
            payload: Some(20),
        },
        Effect::LeaseEnded {
            lease: b,
            had_actor: false,
            payload: Some(20),
        },
    ] {
        assert!(fx.contains(&effect), "{effect:?} in {fx:?}");
    }

    let mut fx = Fx::new();
    books.pool_died(c_pool, &mut fx);
    assert!(fx.contains(&Effect::Revoke {
        lease: c,
        why: Revocation::Lost,
        payload: Some(30),
    }));
    assert_eq!(books.payloads().count(), 0, "no payload outlives its lease");
    let counts = books.stats().counts;
    assert_eq!((counts.released, counts.revoked), (1, 2));
    books.check().unwrap();
}

#[test]
fn the_property_test_catches_a_broken_invariant() {
    // The checker itself: a books whose idle queue is corrupted must be reported.
    let mut books = with_ready_pools(2, 2);
    books.idle.push_back(books.idle[0]);
    assert!(books.check().is_err());
}

#[test]
fn a_waiter_whose_payload_cannot_be_made_leaves_the_books_whole() {
    // The payload is the interpreter's (a waker's clone is user code): if making it panics,
    // nothing of the waiter may stay behind — not a place reserved for growth, not a queue entry.
    let mut books = with_ready_pools(2, 1);
    let (_lease, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut Fx::new()));
    let before = books.entries();
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        books.acquire(
            WaitMode::NoWait,
            || -> WaiterId { panic!("on purpose") },
            &mut Fx::new(),
        )
    }));
    assert!(made.is_err());
    books.check().unwrap();
    assert_eq!(books.entries(), before, "nothing of the waiter stayed");
    assert_eq!(books.stats().waiting, 0);
}

#[test]
fn a_queued_waiter_s_payload_can_be_updated_in_place_until_it_leaves() {
    let mut books = with_ready_pools(1, 1);
    let (lease, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut Fx::new()));
    let first = books.next_waiter;
    queue(&mut books, WaitMode::Forever, &mut Fx::new()).unwrap();
    queue(&mut books, WaitMode::Forever, &mut Fx::new()).unwrap();
    *books.waiter_mut(first).expect("queued") += 100;
    assert_eq!(books.waiter_mut(first + 7), None, "never queued");
    let mut fx = Fx::new();
    books.release(lease, &mut fx);
    assert!(
        matches!(fx.last(), Some(Effect::Grant { waiter_id, waiter, .. }) if *waiter_id == first && *waiter == first + 100),
        "the grant carries the payload as updated: {fx:?}"
    );
    assert_eq!(books.waiter_mut(first), None, "answered: no longer queued");
    assert_eq!(books.cancel_waiter(first + 1, false), Some(first + 1));
    assert_eq!(books.waiter_mut(first + 1), None, "left: no longer queued");
    books.check().unwrap();
}
