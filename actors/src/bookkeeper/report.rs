//! What the bookkeeper reports: consistent snapshots, counters, and its own checks.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::{estimate, Bookkeeper, Ledger};
use crate::books::{BookCounts, BookStats, StartOutcome};
use crate::stats::{Backend, Capacity, Counters, LeaseInfo, PoolId, Stats};

/// How many hold times wait in the books before they are handed to the host to record.
const HOLDS_BATCH: usize = 1024;

impl<S: 'static> Bookkeeper<S> {
    pub(crate) fn start_outcome(&self) -> StartOutcome {
        self.lock().books.start_outcome()
    }

    /// How much can be handed out now (see [`Capacity`]).
    pub(crate) fn capacity(&self) -> Capacity {
        self.capacity_of(&self.lock())
    }

    pub(super) fn capacity_of(&self, ledger: &Ledger<S>) -> Capacity {
        let (available, leased, unhealthy, starting, waiting) = ledger.books.capacity();
        Capacity {
            max_pools: self.config.settings.max_pools,
            available,
            leased,
            unhealthy,
            starting,
            waiting,
        }
    }

    /// A consistent snapshot, taken under the lock.
    pub(crate) fn stats(&self, backend: Backend) -> Stats {
        let ledger = self.lock();
        let BookStats {
            desired,
            available,
            leased,
            waiting,
            starting,
            unhealthy,
            leases,
            pools,
            counts,
        } = ledger.books.stats();
        let retiring = retiring(&ledger, pools);
        let now = Instant::now();
        let leases = leases
            .into_iter()
            .filter_map(|(id, _)| ledger.books.payload(id))
            .map(|l| LeaseInfo {
                id: l.facts.id,
                owner: l.facts.owner.clone(),
                until_soft_expiry: l.facts.soft_expires_at.saturating_duration_since(now),
                until_hard_expiry: l.facts.hard_expires_at.saturating_duration_since(now),
                in_flight: l.in_flight(),
                draining: l.is_draining(),
                pool: l.facts.pool,
            })
            .collect();
        let s = &self.config.settings;
        Stats {
            backend,
            desired,
            max_pools: s.max_pools,
            min_pools: s.min_pools,
            available,
            leased,
            total: available + leased,
            workers_per_pool: s.workers_per_pool,
            waiting,
            retiring,
            unhealthy,
            starting,
            leases,
            counters: self.counters(counts),
        }
    }

    /// How long a new acquirer would wait for a pool now, estimated from recent hold times,
    /// the live leases' ages, the waiters ahead and the pools in service (see `estimate.rs`);
    /// `None` until a few leases have ended since the first call (hold times are measured from
    /// then on) or with no pool in service.
    pub(crate) fn until_free(&self) -> Option<Duration> {
        self.track_holds
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let ledger = self.lock();
        let hold = ledger.hold_mean?;
        let (available, _, _, _, waiting) = ledger.books.capacity();
        let now = Instant::now();
        let ages: Vec<Duration> = ledger
            .books
            .payloads()
            .map(|l| now.saturating_duration_since(l.facts.granted_at))
            .collect();
        super::estimate::until_free(super::estimate::Observed {
            hold,
            ages: &ages,
            available,
            waiting,
        })
    }

    /// A lease granted at `granted_at` ended: its hold time, kept for metrics and the estimate
    /// (if either is on). Returns a full batch of hold times to record.
    pub(super) fn hold_ended(
        &self,
        ledger: &mut Ledger<S>,
        granted_at: Instant,
    ) -> Option<Vec<Duration>> {
        let metrics = self.counters.metrics.enabled();
        let track = self.track_holds.load(Relaxed);
        if !(metrics || track) {
            return None; // no clock read
        }
        let held = granted_at.elapsed();
        if track {
            ledger.hold_mean = Some(estimate::mean_hold(ledger.hold_mean, held));
        }
        if metrics {
            ledger.holds.push(held);
        }
        (ledger.holds.len() >= HOLDS_BATCH).then(|| std::mem::take(&mut ledger.holds))
    }

    /// Brings the metrics the books count and the gauges up to date (see `Metrics::flush`):
    /// every `FLUSH_EVERY` on the supervisor, at each `stats()`, and at the end of a run.
    pub(crate) fn flush_metrics(&self) {
        let metrics = &self.counters.metrics;
        if metrics.enabled() {
            let held = std::mem::take(&mut self.lock().holds);
            metrics.lease_held(&held);
        }
        metrics.flush(|| {
            let ledger = self.lock();
            let BookStats {
                available,
                leased,
                waiting,
                starting,
                unhealthy,
                pools,
                counts,
                ..
            } = ledger.books.stats();
            crate::metrics::Flush {
                acquired: counts.acquired,
                acquired_after_wait: counts.acquired_after_wait,
                timed_out: counts.timed_out,
                rejected: counts.rejected,
                by_state: [available, leased, unhealthy, starting],
                retiring: retiring(&ledger, pools),
                waiting,
                in_flight: ledger.books.payloads().map(|l| l.in_flight()).sum(),
            }
        });
    }

    #[allow(deprecated)] // fills the deprecated aliases too
    fn counters(&self, books: BookCounts) -> Counters {
        let mut counters = Counters {
            acquired: books.acquired,
            acquired_after_wait: books.acquired_after_wait,
            timed_out: books.timed_out,
            rejected: books.rejected,
            released: books.released,
            revoked: books.revoked,
            ..Counters::default()
        };
        self.counters.fill(&mut counters);
        counters.workers_restarted = counters.worker_states_rebuilt;
        counters.pools_restarted = counters.workers_replaced + counters.pools_replaced;
        counters
    }

    /// Entries in the books and the answers not taken yet (for leak tests).
    pub(crate) fn entries(&self) -> usize {
        let ledger = self.lock();
        ledger.books.entries() + ledger.answers.len()
    }

    /// Worker threads alive in the current run (0 when stopped).
    pub(crate) fn live_threads(&self) -> usize {
        self.lock().run.as_ref().map_or(0, |r| r.threads.live())
    }

    /// Checks the books' invariants (tests).
    pub(crate) fn check(&self) -> Result<(), String> {
        let ledger = self.lock();
        ledger.books.check()?;
        let leased = ledger.books.stats().leased;
        let attached = ledger.books.payloads().count();
        if leased != attached {
            return Err(format!(
                "{leased} leases in the books, {attached} with their shared state"
            ));
        }
        Ok(())
    }
}

/// Retiring = pools out of the books (`known`) whose threads still run (derived, not listed).
fn retiring<S>(ledger: &Ledger<S>, known: Vec<PoolId>) -> usize {
    ledger.run.as_ref().map_or(0, |run| {
        let known: HashSet<PoolId> = known.into_iter().collect();
        run.threads
            .pools_with_threads()
            .into_iter()
            .filter(|p| !known.contains(p))
            .count()
    })
}
