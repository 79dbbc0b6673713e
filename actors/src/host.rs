//! The host thread: a fresh actix `System` on its own OS thread, where every actor lives.
//!
//! `SyncArbiter::start`, `Arbiter::new` and `Actor::start` panic without a running System, and a
//! `SyncArbiter`'s forwarder runs on the System arbiter, so the engine brings its own System
//! and never blocks it. `Addr` is `Send + Sync`, so handles work from any runtime or thread.
//!
//! Who supervises the supervisor: a watchdog task on the host waits for the `ManagerActor` to
//! end — by `Shutdown` or by a crash — then waits for the worker threads (at most
//! `shutdown_timeout`) and stops the System. A crashed supervisor has already failed closed
//! (its `Drop`), and if the host thread itself unwinds, a guard closes the books on the way out,
//! so every waiter and `stop()` still gets its answer and `start()` works again.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use actix::{Addr, AsyncContext, Context};
use tokio::sync::{oneshot, Mutex};

use crate::bookkeeper::wait::WaitTicket;
use crate::bookkeeper::{Bookkeeper, LeaseParams, Run};
use crate::books::{StartOutcome, WaitMode};
use crate::config::EngineConfig;
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::manager::{CrashSupervisor, InjectFault, ManagerActor, ScaleChanged, Shutdown};
use crate::pool::PoolSpec;
use crate::stats::{Capacity, Stats};
use crate::sync::lock;
use crate::threads::WorkerThreads;

/// After `shutdown_timeout`, how long `stop` waits more for jobs told to stop now (the process
/// backend kills its children; a thread job may look at `job_stop_reason`).
const OVERDUE_GRACE: Duration = Duration::from_millis(500);

struct Host {
    generation: u64,
    thread: JoinHandle<()>,
    exited: oneshot::Receiver<()>,
}

/// One manager's engine: its books and, while started, its host thread.
pub struct Engine<S: 'static> {
    keeper: Arc<Bookkeeper<S>>,
    host: Mutex<Option<Host>>,
    /// The current run's supervisor (a dead address once that run ended).
    supervisor: std::sync::Mutex<Option<Addr<ManagerActor<S>>>>,
    generation: AtomicU64,
    /// The run whose `start()` was dropped before it finished (ended by `Abandon`).
    abandoned: AtomicU64,
}

impl<S: 'static> Engine<S> {
    /// An engine with the given (validated) settings; nothing runs until [`Engine::start`].
    pub fn new(config: EngineConfig<S>) -> Self {
        Self {
            keeper: Bookkeeper::new(config),
            host: Mutex::new(None),
            supervisor: std::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig<S> {
        &self.keeper.config
    }

    /// The manager's name (`name_prefix`), as every log event carries it in its `manager` field.
    pub fn name(&self) -> &Arc<str> {
        &self.keeper.name
    }

    /// Checks the books' invariants (tests and property tests).
    pub fn check_books(&self) -> Result<(), String> {
        self.keeper.check()
    }

    /// Starts the host thread and the `min_pools` initial pools, and waits until each initial
    /// pool has a worker that built its state or has failed to. Idempotent.
    ///
    /// Fails with `NoHealthyPool` (and leaves the engine stopped) when not one worker could
    /// build its state, unless `start_degraded` is set.
    ///
    /// Cancel safety: the host is recorded before anything is awaited on it, so `stop()` always
    /// finds it; a start whose future is dropped ends the run it began (`Abandon`), and the next
    /// `start()` begins afresh. The wait for the initial pools holds no lock: a `stop()` issued
    /// meanwhile proceeds at once, and this `start()` then answers `StartFailed`.
    pub async fn start(&self) -> Result<(), LeaseError> {
        let generation = {
            let mut host = self.host.lock().await;
            if let Some(running) = host.take() {
                let abandoned = self.abandoned.load(Relaxed) == running.generation;
                if !abandoned && self.keeper.current_generation() == Some(running.generation) {
                    *host = Some(running);
                    return Ok(());
                }
                // The previous run ended without `stop` (its supervisor died, or its start was
                // abandoned): let it finish.
                finish(running).await;
            }
            let generation = self.generation.fetch_add(1, Relaxed) + 1;
            let (ready_tx, ready_rx) = oneshot::channel();
            let (exit_tx, exit_rx) = oneshot::channel();
            let keeper = Arc::clone(&self.keeper);
            let name = format!("{}-host", self.keeper.name);
            let thread = thread::Builder::new()
                .name(name)
                .spawn(move || host_main(keeper, generation, ready_tx, exit_tx))
                .map_err(|e| {
                    LeaseError::StartFailed(format!("cannot spawn the host thread: {e}"))
                })?;
            *host = Some(Host {
                generation,
                thread,
                exited: exit_rx,
            });
            let abandon = Abandon {
                engine: self,
                generation,
            };
            // The host sends its supervisor's address once its run has begun; it never waits for
            // a user factory first, so this wait is short.
            match ready_rx.await {
                Ok(supervisor) => *lock(&self.supervisor) = Some(supervisor),
                Err(_) => {
                    abandon.disarm();
                    if let Some(running) = host.take() {
                        finish(running).await;
                    }
                    return Err(LeaseError::StartFailed(
                        "the host thread exited during start-up".to_owned(),
                    ));
                }
            }
            abandon.disarm();
            generation
        };
        let abandon = Abandon {
            engine: self,
            generation,
        };
        let outcome = self.initial_pools_settled().await;
        abandon.disarm();
        let failure = match outcome {
            StartOutcome::Serving | StartOutcome::Pending => None,
            StartOutcome::Failed(error) if self.keeper.config.settings.start_degraded => {
                tracing::warn!(manager = %self.keeper.name, error = %error, "no worker could build its state; started anyway (start_degraded), pools keep retrying");
                None
            }
            StartOutcome::Failed(error) => Some(LeaseError::NoHealthyPool(error)),
            StartOutcome::Ended => Some(LeaseError::StartFailed(
                "the manager was stopped (or its supervisor ended) during start-up".to_owned(),
            )),
        };
        if let Some(error) = failure {
            self.stop_generation(generation).await;
            tracing::warn!(manager = %self.keeper.name, error = %error, "lease manager did not start");
            return Err(error);
        }
        tracing::info!(manager = %self.keeper.name, generation, "lease manager started");
        Ok(())
    }

    /// Stops run `generation` if the host slot still holds it (a failed start's own run).
    async fn stop_generation(&self, generation: u64) {
        let mut host = self.host.lock().await;
        if host.as_ref().is_some_and(|h| h.generation == generation) {
            self.begin_shutdown();
            if let Some(running) = host.take() {
                finish(running).await;
            }
        }
    }

    /// Waits until no pool is starting any more.
    async fn initial_pools_settled(&self) -> StartOutcome {
        loop {
            let notified = self.keeper.settled.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a change between the look and the wait is seen.
            notified.as_mut().enable();
            match self.keeper.start_outcome() {
                StartOutcome::Pending => notified.await,
                outcome => return outcome,
            }
        }
    }

    /// Stops: waiters get `Stopped`, leases are revoked, pools retired, worker threads waited
    /// for up to `shutdown_timeout`, the host thread joined. Idempotent; `start` works again.
    pub async fn stop(&self) {
        let mut host = self.host.lock().await;
        let Some(running) = host.take() else {
            return;
        };
        self.begin_shutdown();
        finish(running).await;
        tracing::info!(manager = %self.keeper.name, "lease manager stopped");
    }

    /// Begins a shutdown without waiting for it (used when the last manager handle is dropped).
    pub fn stop_detached(&self) {
        self.begin_shutdown();
    }

    /// Closes the books (waiters answered `Stopped`, leases revoked) and tells the supervisor
    /// to shut the host down.
    fn begin_shutdown(&self) {
        if let Some(run) = self.keeper.end_run(None) {
            let supervisor = self.supervisor();
            if let Some(supervisor) = supervisor.filter(Addr::connected) {
                // `do_send`: a busy supervisor's mailbox may be over its capacity; this must
                // still get through.
                supervisor.do_send(Shutdown);
            } else {
                // The supervisor is gone (its watchdog is already stopping the host); stop the
                // System directly so the host can exit.
                run.system.stop();
            }
        }
    }

    /// Begins an acquire: an idle pool at once when nobody is queued (`Ok(Ok(lease))`),
    /// otherwise a place in the queue to poll (`Ok(Err(ticket))`), or a refusal.
    pub fn begin_acquire(
        &self,
        params: LeaseParams,
        mode: WaitMode,
    ) -> Result<Result<LeaseCore<S>, WaitTicket<S>>, LeaseError> {
        self.keeper.acquire(params, mode, None)
    }

    /// [`begin_acquire`](Self::begin_acquire) from inside a poll: `waker` is whom to wake once
    /// a queued acquirer is answered, so the ticket's first poll with it need not look.
    pub fn begin_acquire_waking(
        &self,
        params: LeaseParams,
        mode: WaitMode,
        waker: &std::task::Waker,
    ) -> Result<Result<LeaseCore<S>, WaitTicket<S>>, LeaseError> {
        self.keeper.acquire(params, mode, Some(waker))
    }

    /// The manager's metric handles (no-ops without the `metrics` feature or a recorder).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.keeper.counters.metrics
    }

    /// How long a new acquirer would wait for a pool now, estimated from what the manager
    /// observes (see `bookkeeper/estimate.rs`); `None` while there is no basis yet.
    pub fn until_free(&self) -> Option<Duration> {
        self.keeper.until_free()
    }

    /// How much can be handed out now: cheap (no allocation, no message).
    pub fn capacity(&self) -> Capacity {
        self.keeper.capacity()
    }

    /// A consistent snapshot of pools, leases, waiters and counters.
    pub fn stats(&self) -> Stats {
        let stats = self.keeper.stats(self.keeper.config.backend());
        // Metrics (feature `metrics`) at least as fresh as the snapshot just taken.
        self.keeper.flush_metrics();
        stats
    }

    /// The current run's number, while started.
    pub fn current_generation(&self) -> Option<u64> {
        self.keeper.current_generation()
    }

    /// Asks the supervisor to re-evaluate the sizing target now.
    pub fn notify_scale_changed(&self) {
        if let Some(supervisor) = self.running_supervisor() {
            supervisor.do_send(ScaleChanged);
        }
    }

    /// Fault injection for supervision tests: forwards `fault` to the supervisor and answers
    /// whether its target existed.
    pub async fn inject_fault(&self, fault: InjectFault) -> bool {
        match self.running_supervisor() {
            Some(supervisor) => supervisor.send(fault).await.unwrap_or(false),
            None => false,
        }
    }

    /// Fault injection: makes the supervisor panic in a handler. Answers whether one was running.
    pub fn crash_supervisor(&self) -> bool {
        match self.running_supervisor().filter(Addr::connected) {
            Some(supervisor) => {
                supervisor.do_send(CrashSupervisor);
                true
            }
            None => false,
        }
    }

    /// Fault injection: the next `n` worker-thread spawns fail as they do at the thread limit.
    pub fn fail_next_worker_spawns(&self, n: usize) {
        self.keeper.inject_spawn_failures(n);
    }

    fn supervisor(&self) -> Option<Addr<ManagerActor<S>>> {
        lock(&self.supervisor).clone()
    }

    /// The supervisor, while a run is on.
    fn running_supervisor(&self) -> Option<Addr<ManagerActor<S>>> {
        self.keeper.current_generation()?;
        self.supervisor()
    }

    /// Runs `f` on the host thread, where actors of this engine must start (the grinder's).
    /// Fails with `NotStarted` when the manager is not running.
    pub fn spawn_on_host(&self, f: impl FnOnce() + Send + 'static) -> Result<(), LeaseError> {
        let run = self.keeper.current_run().ok_or(LeaseError::NotStarted)?;
        if run.system.arbiter().spawn_fn(f) {
            Ok(())
        } else {
            Err(LeaseError::NotStarted)
        }
    }

    /// Entries in the engine's books (pools in every state, waiters, leases), for leak tests.
    pub fn book_entries(&self) -> usize {
        self.keeper.entries()
    }

    /// Worker threads alive in the current run (0 when stopped).
    pub fn live_worker_threads(&self) -> usize {
        self.keeper.live_threads()
    }
}

/// Ends run `generation` when the `start()` that began it is dropped before it finished: its
/// books are closed and its supervisor told to shut down, so the host ends by itself; the next
/// `start()` or `stop()` joins it. (If the host has not begun its run yet, it sees that nobody
/// waits for it to be ready and ends itself.)
struct Abandon<'a, S: 'static> {
    engine: &'a Engine<S>,
    generation: u64,
}

impl<S: 'static> Abandon<'_, S> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl<S: 'static> Drop for Abandon<'_, S> {
    fn drop(&mut self) {
        self.engine.abandoned.store(self.generation, Relaxed);
        if self.engine.keeper.current_generation() == Some(self.generation) {
            self.engine.begin_shutdown();
        }
    }
}

/// Waits for a host thread's last step and joins it.
async fn finish(running: Host) {
    let _ = running.exited.await;
    // The host signalled its very last step (or died), so this join does not wait in practice.
    let _ = running.thread.join();
}

/// Closes the books of its run when the host thread ends for any reason, unwinding included.
struct CloseOnExit<S: 'static> {
    keeper: Arc<Bookkeeper<S>>,
    generation: u64,
    exited: Option<oneshot::Sender<()>>,
}

impl<S: 'static> Drop for CloseOnExit<S> {
    fn drop(&mut self) {
        if self.keeper.end_run(Some(self.generation)).is_some() {
            tracing::error!(manager = %self.keeper.name,
                generation = self.generation,
                "the host thread ended without a shutdown; the books are closed"
            );
        }
        if let Some(exited) = self.exited.take() {
            let _ = exited.send(());
        }
    }
}

fn host_main<S: 'static>(
    keeper: Arc<Bookkeeper<S>>,
    generation: u64,
    ready: oneshot::Sender<Addr<ManagerActor<S>>>,
    exited: oneshot::Sender<()>,
) {
    let _close = CloseOnExit {
        keeper: Arc::clone(&keeper),
        generation,
        exited: Some(exited),
    };
    let system = actix_rt::System::new();
    let supervisor = system.block_on(async {
        let ctx = Context::<ManagerActor<S>>::new();
        let threads = WorkerThreads::new();
        keeper.begin_run(Run {
            generation,
            host: ctx.address().recipient(),
            timers: tokio::runtime::Handle::current(),
            system: actix_rt::System::current(),
            threads: Arc::clone(&threads),
        });
        let spec = PoolSpec {
            keeper: Arc::clone(&keeper),
            threads: Arc::clone(&threads),
            supervisor: ctx.address().recipient(),
        };
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        let mut manager = ManagerActor::new(spec, generation, ended_tx);
        // The initial pools are spawned before `start` begins waiting for them.
        manager.guarded("start", ManagerActor::reconcile);
        let supervisor = ctx.run(manager);
        let timeout = keeper.config.settings.shutdown_timeout;
        let name = Arc::clone(&keeper.name);
        let overdue = Arc::clone(&keeper);
        actix_rt::spawn(async move {
            // The supervisor ended: by `Shutdown`, or by a crash after failing closed.
            let _ = ended_rx.await;
            let mut stuck = threads.wait_all_exited(timeout).await;
            if !stuck.is_empty() {
                // Jobs that can stop when told (`current::job_stop_reason`: the process
                // backend kills its children) get a moment to do so.
                overdue.mark_overdue(generation);
                stuck = threads.wait_all_exited(OVERDUE_GRACE).await;
            }
            if !stuck.is_empty() {
                tracing::warn!(manager = %name,
                    threads = ?stuck,
                    timeout = ?timeout,
                    "worker threads still busy after shutdown_timeout; leaving them detached"
                );
            }
            actix_rt::System::current().stop();
        });
        supervisor
    });
    if let Err(supervisor) = ready.send(supervisor) {
        // The `start()` that spawned us was dropped before we were ready: end the run we began.
        if keeper.end_run(Some(generation)).is_some() {
            supervisor.do_send(Shutdown);
        }
    }
    let _ = system.run();
}
