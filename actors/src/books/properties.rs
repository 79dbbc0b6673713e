//! A property test of the books: random sequences of transitions (acquires in every mode,
//! cancels, releases, revocations, pools spawned, ready, unhealthy or dead, new targets, sweeps,
//! restarts), checking after every step the books' own invariants (`Books::check`) and what they
//! cannot see themselves: FIFO hand-off, no revoked or retired pool handed out again, the lease
//! and waiter counts against a model, unhealthy counts only of live pools.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::tests::{limits, Fx, TestBooks};
use super::{Acquired, Effect, WaitMode, WaiterId};
use crate::lease_state::Revocation;
use crate::stats::{LeaseId, PoolId};

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
