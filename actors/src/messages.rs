//! Every message the engine's actors exchange, named as commands. Each doc line names the
//! sender and the handler.

use actix::dev::channel::AddressReceiver;
use actix::Message;

use std::sync::Arc;

use crate::job::ErasedJob;
use crate::lease::{LeaseActor, LeaseShared};
use crate::stats::PoolId;

/// One job for a worker. Sent by a lease handle (`LeaseCore::dispatch`) over its pool's
/// crossbeam queue — not through actix, see [`crate::Worker`] — and run by a [`crate::Worker`].
pub struct Job<S>(pub(crate) JobKind<S>);

pub(crate) enum JobKind<S> {
    /// Run this closure.
    Run(Box<dyn ErasedJob<S>>),
    /// Fault injection (`kill_worker`): kill the thread that takes this job, outside
    /// `catch_unwind`, as a crash in the worker itself would.
    KillWorker,
}

/// Take this pool out of service: drop the workers' address so the `SyncArbiter` stops and its
/// threads exit after the jobs already queued. Sent by the manager; handled by the pool actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPool;

/// The holder released the lease. Sent by the lease handle (`release().await` or `Drop`);
/// handled by the lease actor, which returns the pool at once or starts draining.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release;

/// The last in-flight job of a released lease finished. Sent by a job's in-flight guard on the
/// worker thread; handled by the lease actor, which then returns the pool.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drained;

/// Create this many pools and route each to a waiter, the idle set, or retirement.
/// Sent by the registry when capacity falls short; handled by the manager.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CreatePools(pub usize);

/// Start the lease actor for a lease whose handle was already built on the acquiring thread.
/// Sent by the registry; handled by the manager, which runs the actor on the host — unless the
/// lease already ended (a short lease released before the host got to it needs no actor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SpawnLease<S: 'static> {
    pub(crate) mailbox: AddressReceiver<LeaseActor<S>>,
    pub(crate) lease: Arc<LeaseShared>,
}

/// Retire this pool. Sent by the registry; handled by the manager, which stops the pool actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RetirePool(pub PoolId);

/// Re-evaluate `desired` now. Sent by `notify_scale_changed`; handled by the manager.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScaleChanged;

/// Stop every pool and end the supervisor; the host's watchdog then waits up to
/// `shutdown_timeout` for the worker threads and stops the System. Sent by `stop` after it has
/// closed the books; handled by the manager.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A worker thread of this pool ended before the pool retired it. Sent by the worker's exit
/// notice as its thread unwinds; handled by the pool actor, which replaces it with backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerExited {
    /// Which of the pool's `SyncArbiter`s the thread belonged to.
    pub(crate) arbiter: u64,
    /// Why it ended.
    pub(crate) cause: WorkerExit,
}

/// Why a worker thread ended early.
#[derive(Debug, Clone)]
pub(crate) enum WorkerExit {
    /// Its state factory returned this error or panicked (the text says which).
    StateFailed(String),
    /// It unwound for another reason (a `kill_worker` fault, or a bug).
    Crashed,
}

/// A worker built its state and is serving. Sent from the worker thread; handled by the pool
/// actor, which declares an unhealthy pool healthy again only on this proof.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerReady;

/// Start replacement workers for those that died. Scheduled by the pool actor itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplaceWorkers;

/// A pool actor stopped without being retired (a panic in one of its handlers). Sent by the
/// pool actor's `Drop`; handled by the manager, which takes the pool out of the books (revoking
/// its lease, if any) and builds capacity back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PoolDied(pub PoolId);

/// Fault injection (feature `testing`): make the receiving actor panic in its handler, as a
/// bug would. Handled by the pool actor and the lease actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Fault injection (feature `testing`): make the supervisor itself panic in a handler, as a bug
/// would. Sent by `LeaseManager::kill_supervisor`; handled by the manager, outside the guard
/// that contains its other handlers' failures.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CrashSupervisor;

/// Fault injection (feature `testing`): kill this many workers of the pool, as crashes would.
/// Sent by the manager; handled by the pool actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KillWorkers(pub usize);

/// Fault injection (feature `testing`), sent by `LeaseManager`'s testing methods; handled by
/// the manager, which forwards it. Answers whether the target exists.
#[derive(Message)]
#[rtype(result = "bool")]
pub enum InjectFault {
    /// Make a pool actor panic in a handler.
    CrashPool(PoolId),
    /// Kill `n` worker threads of a pool.
    KillWorkers(PoolId, usize),
    /// Make a lease actor panic in a handler.
    CrashLease(crate::stats::LeaseId),
}

/// Run this closure on the host System (to start actors that must live there, such as a
/// `WorkGrinder`'s). Sent by `Engine::run_on_host`; handled by the manager.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunOnHost(pub(crate) Box<dyn FnOnce() + Send>);

/// Look at the grinder's books: start the batches that are due and arm the `max_wait` timer.
/// Sent by enqueuers (first item, or the threshold reached) and by a batch's end, at most one
/// at a time; handled by the grinder actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

/// Stop the grinder actor. Sent by `Grinder::stop`; handled by the grinder actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopGrinder;
