//! Unit tests of the books, and a property test over random transition sequences. The books are
//! pure, so these need no runtime, no threads and no timers: pools carry their number as their
//! handle, and waiters their arrival number.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{Acquired, Books, Effect, Limits, StartOutcome, WaitMode, WaiterId};
use crate::error::LeaseError;
use crate::lease_state::Revocation;
use crate::stats::{LeaseId, PoolId};

type TestBooks = Books<u64, WaiterId>;
type Fx = Vec<Effect<u64, WaiterId>>;

fn limits(max_pools: usize, min_pools: usize, max_waiters: usize) -> Limits {
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
                waiter,
                lease,
                pool,
                ..
            } => Some((*waiter, *lease, *pool)),
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
        why: Revocation::Expired
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
        why: Revocation::Lost
    }));
    assert_eq!(created(&fx).len(), 1);
    assert!(
        !books.release(lease, &mut Fx::new()),
        "the lease ended with its pool"
    );
    books.check().unwrap();
}

#[test]
fn lease_actors_are_asked_for_once_per_batch() {
    let mut books = with_ready_pools(3, 3);
    let mut fx = Fx::new();
    let (a, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    let (b, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    let asks = fx
        .iter()
        .filter(|e| **e == Effect::SpawnLeaseActors)
        .count();
    assert_eq!(asks, 1, "one request for both: {fx:?}");
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
        had_actor: true
    }));
    let mut fx = Fx::new();
    now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    assert!(
        fx.contains(&Effect::SpawnLeaseActors),
        "a new batch asks again"
    );
}

#[test]
fn ending_the_run_answers_everyone_and_leaves_nothing() {
    let mut books = with_ready_pools(1, 1);
    let mut fx = Fx::new();
    let (lease, _) = now_lease(queue(&mut books, WaitMode::Forever, &mut fx));
    queue(&mut books, WaitMode::Forever, &mut fx).unwrap();
    let mut fx = Fx::new();
    assert!(books.end_run(&mut fx));
    assert!(fx.contains(&Effect::Refuse {
        waiter: 0,
        error: LeaseError::Stopped
    }));
    assert!(fx.contains(&Effect::Revoke {
        lease,
        why: Revocation::Stopped
    }));
    assert_eq!(books.entries(), 0);
    assert!(!books.end_run(&mut Fx::new()), "once");
    books.check().unwrap();
}

/// One step of the property test. Indices pick among what exists at that moment.
#[derive(Debug, Clone)]
enum Op {
    Acquire(u8),
    Cancel(usize),
    Release(usize),
    Revoke(usize),
    Spawn(usize),
    Ready(usize),
    Unhealthy(usize),
    Died(usize),
    SetDesired(usize),
    Sweep,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3).prop_map(Op::Acquire),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Revoke),
        3 => any::<usize>().prop_map(Op::Spawn),
        3 => any::<usize>().prop_map(Op::Ready),
        1 => any::<usize>().prop_map(Op::Unhealthy),
        1 => any::<usize>().prop_map(Op::Died),
        1 => (0usize..5).prop_map(Op::SetDesired),
        1 => Just(Op::Sweep),
        1 => Just(Op::Restart),
    ]
}

fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()])
}

/// What the test saw, to check the properties the books cannot check themselves.
#[derive(Default)]
struct Model {
    generation: u64,
    retired: BTreeSet<PoolId>,
    live: Vec<LeaseId>,
    /// Each lease's pool: a revoked lease's pool must never be handed out again.
    pool_of: BTreeMap<LeaseId, PoolId>,
    queued: Vec<WaiterId>,
    creating: Vec<PoolId>,
    last_granted_waiter: Option<WaiterId>,
}

impl Model {
    fn absorb(&mut self, fx: &Fx) -> Result<(), String> {
        for effect in fx {
            match effect {
                Effect::CreatePool(p) => self.creating.push(*p),
                Effect::RetirePool(p) => {
                    self.retired.insert(*p);
                }
                Effect::Grant {
                    waiter,
                    lease,
                    pool,
                    ..
                } => {
                    if self.retired.contains(pool) {
                        return Err(format!("retired {pool} handed out again"));
                    }
                    if self.last_granted_waiter.is_some_and(|w| w > *waiter) {
                        return Err(format!("waiter {waiter} served after a later one"));
                    }
                    self.last_granted_waiter = Some(*waiter);
                    self.queued.retain(|w| w != waiter);
                    self.live.push(*lease);
                    self.pool_of.insert(*lease, *pool);
                }
                Effect::Revoke { lease, .. } => {
                    if let Some(pool) = self.pool_of.get(lease) {
                        self.retired.insert(*pool);
                    }
                }
                Effect::Refuse { waiter, .. } => self.queued.retain(|w| w != waiter),
                Effect::LeaseEnded { lease, .. } => self.live.retain(|l| l != lease),
                Effect::SpawnLeaseActors => {}
            }
        }
        Ok(())
    }
}

fn run_ops(ops: &[Op]) -> Result<(), String> {
    let mut books = TestBooks::new(limits(3, 1, 4));
    let mut model = Model {
        generation: 1,
        ..Model::default()
    };
    books.begin_run(1);
    let mut fx = Fx::new();
    books.set_desired(1, &mut fx);
    model.absorb(&fx)?;
    for (step, op) in ops.iter().enumerate() {
        let mut fx = Fx::new();
        let pools = books.stats().pools;
        match op.clone() {
            Op::Acquire(mode) => {
                let mode = [
                    WaitMode::Forever,
                    WaitMode::NoWait,
                    WaitMode::Timeout(std::time::Duration::from_secs(1)),
                ][mode as usize % 3];
                let id = books.next_waiter;
                match books.acquire(mode, || id, &mut fx) {
                    Ok(Acquired::Now { lease, pool, .. }) => {
                        if model.retired.contains(&pool) {
                            return Err(format!("step {step}: retired {pool} handed out"));
                        }
                        if !model.queued.is_empty() {
                            return Err(format!("step {step}: served ahead of waiters"));
                        }
                        model.live.push(lease);
                        model.pool_of.insert(lease, pool);
                    }
                    Ok(Acquired::Queued(w)) => model.queued.push(w),
                    Err(_) => {}
                }
            }
            Op::Cancel(i) => {
                if let Some(w) = pick(&model.queued, i) {
                    books.cancel_waiter(w, i % 2 == 0);
                    model.queued.retain(|q| *q != w);
                }
            }
            Op::Release(i) => {
                if let Some(l) = pick(&model.live, i) {
                    books.release(l, &mut fx);
                }
            }
            Op::Revoke(i) => {
                if let Some(l) = pick(&model.live, i) {
                    books.revoke(l, Revocation::Expired, &mut fx);
                }
            }
            Op::Spawn(i) => {
                if let Some(p) = pick(&model.creating, i) {
                    model.creating.retain(|c| *c != p);
                    books.pool_spawned(p, model.generation, p.get());
                }
            }
            Op::Ready(i) => {
                if let Some(p) = pick(&pools, i) {
                    books.pool_ready(p, &mut fx);
                }
            }
            Op::Unhealthy(i) => {
                if let Some(p) = pick(&pools, i) {
                    books.pool_unhealthy(p, format!("failure at step {step}"), &mut fx);
                }
            }
            Op::Died(i) => {
                if let Some(p) = pick(&pools, i) {
                    books.pool_died(p, &mut fx);
                    model.retired.insert(p);
                }
            }
            Op::SetDesired(n) => books.set_desired(n, &mut fx),
            Op::Sweep => {
                for lease in books.take_unswept() {
                    if !model.live.contains(&lease) {
                        return Err(format!("step {step}: swept ended {lease}"));
                    }
                }
            }
            Op::Restart => {
                books.end_run(&mut fx);
                model.absorb(&fx)?;
                fx.clear();
                model.queued.clear();
                model.live.clear();
                model.creating.clear();
                model.generation += 1;
                books.begin_run(model.generation);
                books.set_desired(1, &mut fx);
            }
        }
        model
            .absorb(&fx)
            .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
        books
            .check()
            .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
        let s = books.stats();
        if s.leased != model.live.len() || s.waiting != model.queued.len() {
            return Err(format!(
                "step {step} ({op:?}): books {} leases / {} waiters, model {} / {}",
                s.leased,
                s.waiting,
                model.live.len(),
                model.queued.len()
            ));
        }
        if s.pools.iter().any(|p| model.retired.contains(p)) {
            return Err(format!(
                "step {step} ({op:?}): a retired pool is still in the books"
            ));
        }
        if s.unhealthy > s.pools.len() {
            return Err(format!(
                "step {step} ({op:?}): more unhealthy pools than pools"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_transitions_keep_every_invariant(ops in proptest::collection::vec(op(), 1..80)) {
        if let Err(broken) = run_ops(&ops) {
            prop_assert!(false, "{}", broken);
        }
    }
}

#[test]
fn the_property_test_catches_a_broken_invariant() {
    // The checker itself: a books whose idle queue is corrupted must be reported.
    let mut books = with_ready_pools(2, 2);
    books.idle.push_back(books.idle[0]);
    assert!(books.check().is_err());
}
