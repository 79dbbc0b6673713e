//! The admission gate: the apalis service's `poll_ready`, which lets apalis fetch only while
//! the manager has room for one more task of ours (plus the prefetch), so that a saturated
//! instance leaves tasks for the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use super::{task, Phase, Shared};
use crate::queue::store::{TaskFuture, TaskService};

/// How long a snapshot of the manager's free leases is trusted (besides our own count).
const SNAPSHOT_TTL: Duration = Duration::from_millis(50);

/// A snapshot of the manager's free leases. Between snapshots the worker counts the leases its
/// own tasks took since (so its claims stay within the bound); other users' acquires are seen
/// at the next snapshot, taken at least every `SNAPSHOT_TTL` and whenever the count says "full".
struct Snap {
    free: usize,
    /// `Counters::leased` when the snapshot was taken.
    leased_at: u64,
    taken: Instant,
}

/// The apalis service: claims only while the manager has room, runs each task on a lease.
pub(super) struct LeasedService<S: 'static, T> {
    shared: Arc<Shared<S, T>>,
    /// What the manager could hand out at the last snapshot (`None`: take a new one).
    snap: Option<Snap>,
    refresh: Option<BoxFuture<'static, Snap>>,
    /// The last snapshot showed no room: wait for a release (or a moment) before the next.
    pause: bool,
    /// Wakes the worker every `poll_interval` while it is ready: apalis 1.0's interval
    /// strategy can consume its tick and then park on an empty fetch with no timer armed,
    /// which left an idle worker deaf to new tasks until its next heartbeat.
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Sleeps out a claim pause (see `Shared::claim_pause`).
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Send + 'static, T: Send + 'static> LeasedService<S, T> {
    pub(super) fn new(shared: Arc<Shared<S, T>>) -> Self {
        LeasedService {
            shared,
            snap: None,
            refresh: None,
            pause: false,
            tick: None,
            paused: None,
        }
    }

    fn arm_tick(&mut self, cx: &mut Context<'_>) {
        let every = self.shared.settings.poll_interval;
        let tick = self
            .tick
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if tick.as_mut().poll(cx).is_ready() {
            tick.as_mut().reset(tokio::time::Instant::now() + every);
            let _ = tick.as_mut().poll(cx);
        }
    }

    fn snapshot(&self, pause: bool) -> BoxFuture<'static, Snap> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            if pause {
                // Another user's release is not announced to us: look again soon.
                let _ =
                    tokio::time::timeout(Duration::from_millis(20), shared.freed.notified()).await;
            }
            loop {
                let before = shared.counters.leased.load(Ordering::SeqCst);
                let stats = shared.manager.stats().await;
                // A task of ours that got its lease while the snapshot was taken might be
                // counted twice (as waiting and as leased) or not at all: take another.
                if shared.counters.leased.load(Ordering::SeqCst) == before {
                    return Snap {
                        free: stats
                            .max_pools
                            .saturating_sub(stats.leased + stats.unhealthy),
                        leased_at: before,
                        taken: Instant::now(),
                    };
                }
            }
        })
    }

    /// Whether a claim pause is on; arms its timer if so.
    fn claim_paused(&mut self, cx: &mut Context<'_>) -> bool {
        let until = self
            .shared
            .claim_pause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0;
        let Some(until) = until.filter(|u| *u > Instant::now()) else {
            return false;
        };
        let deadline = tokio::time::Instant::from_std(until);
        let sleep = self
            .paused
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_pending()
    }
}

impl<S, T> TaskService for LeasedService<S, T>
where
    S: Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        if self.shared.phase.get() != Phase::Running {
            // Stopping: claim nothing more (apalis may not have taken the stop yet). `stop`
            // wakes the worker through apalis' own stop.
            return Poll::Pending;
        }
        if self.claim_paused(cx) {
            return Poll::Pending;
        }
        loop {
            if let Some(snap) = &self.snap {
                let c = &self.shared.counters;
                let waiting = c.waiting.load(Ordering::SeqCst) as u64;
                let taken_since = c.leased.load(Ordering::SeqCst) - snap.leased_at;
                let room = (snap.free + self.shared.settings.prefetch) as u64;
                if waiting + taken_since < room {
                    if snap.taken.elapsed() < SNAPSHOT_TTL {
                        self.arm_tick(cx);
                        return Poll::Ready(Ok(()));
                    }
                } else {
                    self.pause = true;
                }
                self.snap = None;
            }
            let pause = std::mem::take(&mut self.pause);
            let refresh = match &mut self.refresh {
                Some(f) => f,
                None => self.refresh.insert(self.snapshot(pause)),
            };
            match refresh.as_mut().poll(cx) {
                Poll::Ready(snap) => {
                    self.refresh = None;
                    self.snap = Some(snap);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn call(&mut self, task: Task<Vec<u8>>) -> TaskFuture {
        task::call(Arc::clone(&self.shared), task)
    }
}
