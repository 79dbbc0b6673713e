//! The host thread: a fresh actix `System` on its own OS thread, where every actor lives.
//!
//! `SyncArbiter::start`, `Arbiter::new` and `Actor::start` panic without a running System, and a
//! `SyncArbiter`'s forwarder runs on the System arbiter, so the engine brings its own System
//! and never blocks it. `Addr` is `Send + Sync`, so handles work from any runtime or thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use actix::{AsyncContext, Context};
use tokio::sync::{oneshot, Mutex};

use crate::config::EngineConfig;
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::manager::ManagerActor;
use crate::messages::{InjectFault, RunOnHost, ScaleChanged, Shutdown};
use crate::pool::PoolSpec;
use crate::registry::{Attempt, LeaseParams, Registry, Run, WaitMode, WaitTicket};
use crate::stats::{Backend, Stats};
use crate::threads::WorkerThreads;

struct Host {
    thread: JoinHandle<()>,
    exited: oneshot::Receiver<()>,
}

/// One manager's engine: its books and, while started, its host thread.
pub struct Engine<S: 'static> {
    registry: Arc<Registry<S>>,
    host: Mutex<Option<Host>>,
    generation: AtomicU64,
}

impl<S: 'static> Engine<S> {
    /// An engine with the given (validated) settings; nothing runs until [`Engine::start`].
    pub fn new(config: EngineConfig<S>) -> Self {
        Self {
            registry: Registry::new(Arc::new(config)),
            host: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig<S> {
        &self.registry.config
    }

    /// Starts the host thread and the `min_pools` initial pools. Idempotent.
    pub async fn start(&self) -> Result<(), LeaseError> {
        let mut host = self.host.lock().await;
        if host.is_some() {
            return Ok(());
        }
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let registry = Arc::clone(&self.registry);
        let name = format!("{}-host", self.registry.config.name_prefix);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || host_main(registry, generation, ready_tx, exit_tx))
            .map_err(|e| LeaseError::StartFailed(format!("cannot spawn the host thread: {e}")))?;
        match ready_rx.await {
            Ok(()) => {
                *host = Some(Host {
                    thread,
                    exited: exit_rx,
                });
                tracing::info!(generation, "lease manager started");
                Ok(())
            }
            Err(_) => {
                let _ = thread.join();
                Err(LeaseError::StartFailed(
                    "the host thread exited during start-up".to_owned(),
                ))
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
        let _ = running.exited.await;
        // The host signalled its very last step, so this join does not wait in practice.
        let _ = running.thread.join();
        tracing::info!("lease manager stopped");
    }

    /// Begins a shutdown without waiting for it (used when the last manager handle is dropped).
    pub fn stop_detached(&self) {
        self.begin_shutdown();
    }

    /// Closes the books (waiters answered `Stopped`, leases revoked) and tells the supervisor
    /// to shut the host down.
    fn begin_shutdown(&self) {
        if let Some((run, waiters)) = self.registry.begin_stop() {
            for waiter in waiters {
                let _ = waiter.send(Err(LeaseError::Stopped));
            }
            let shutdown = Shutdown {
                timeout: self.registry.config.shutdown_timeout,
            };
            if run.manager.try_send(shutdown).is_err() {
                // The supervisor is gone; stop its System directly so the host can exit.
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
        Ok(match self.registry.try_acquire(params, mode)? {
            Attempt::Ready(lease, effects) => {
                effects.apply();
                Ok(lease)
            }
            Attempt::Queued(ticket, effects) => {
                effects.apply();
                Err(ticket)
            }
        })
    }

    /// A consistent snapshot of pools, leases, waiters and counters.
    pub fn stats(&self, backend: Backend) -> Stats {
        self.registry.stats(backend)
    }

    /// Asks the supervisor to re-evaluate the sizing target now.
    pub fn notify_scale_changed(&self) {
        if let Some(run) = self.registry.current_run() {
            run.manager.do_send(ScaleChanged);
        }
    }

    /// Fault injection for supervision tests: forwards `fault` to the supervisor and answers
    /// whether its target existed.
    pub async fn inject_fault(&self, fault: InjectFault) -> bool {
        match self.registry.current_run() {
            Some(run) => run.manager.send(fault).await.unwrap_or(false),
            None => false,
        }
    }

    /// Runs `f` on the host System (for actors that must live there). Fails with `NotStarted`
    /// when the manager is not running.
    pub async fn run_on_host(&self, f: Box<dyn FnOnce() + Send>) -> Result<(), LeaseError> {
        let run = self.registry.current_run().ok_or(LeaseError::NotStarted)?;
        run.manager
            .send(RunOnHost(f))
            .await
            .map_err(|_| LeaseError::NotStarted)
    }

    /// Worker threads alive in the current run (0 when stopped).
    pub fn live_worker_threads(&self) -> usize {
        self.registry.live_threads()
    }
}

fn host_main<S: 'static>(
    registry: Arc<Registry<S>>,
    generation: u64,
    ready: oneshot::Sender<()>,
    exited: oneshot::Sender<()>,
) {
    let system = actix_rt::System::new();
    system.block_on(async {
        let ctx = Context::<ManagerActor<S>>::new();
        let threads = WorkerThreads::new();
        registry.begin_run(Run {
            generation,
            manager: ctx.address(),
            timers: tokio::runtime::Handle::current(),
            system: actix_rt::System::current(),
            threads: Arc::clone(&threads),
        });
        let spec = PoolSpec {
            registry: Arc::clone(&registry),
            threads,
        };
        let mut manager = ManagerActor::new(spec, generation);
        // Initial pools exist before `start` returns.
        manager.reconcile();
        ctx.run(manager);
    });
    let _ = ready.send(());
    let _ = system.run();
    let _ = exited.send(());
}
