//! Every message the engine's actors exchange, named as commands. Each doc line names the
//! sender and the handler.

use std::time::Duration;

use actix::dev::channel::AddressReceiver;
use actix::Message;

use std::sync::Arc;

use crate::job::ErasedJob;
use crate::lease::{LeaseActor, LeaseShared};
use crate::stats::PoolId;

/// One job for a worker. Sent by a lease handle (`LeaseCore::dispatch`) over its pool's
/// crossbeam queue — not through actix, see [`crate::Worker`] — and run by a [`crate::Worker`].
pub struct Job<S>(pub(crate) Box<dyn ErasedJob<S>>);

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

/// Stop every pool, wait up to `timeout` for worker threads, then stop the host System.
/// Sent by `stop`; handled by the manager.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub(crate) timeout: Duration,
}
