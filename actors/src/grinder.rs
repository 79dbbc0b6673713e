//! The `WorkGrinder` engine: many small submissions, run in leased batches.
//!
//! Items wait in shared books (any thread can add to them). The [`GrinderActor`] on the host
//! System starts a batch when pending items reach `batch_size_threshold` or the oldest has waited
//! `max_wait`: the batch takes every pending item and acquires one lease; once it has the lease
//! it sends each item to that lease's workers, where it answers its own caller directly. A batch
//! token shared by the batch's jobs holds the lease; when the last job ends the token drops,
//! which releases the lease and frees the batch's slot. Up to `max_concurrent_batches` batches
//! (waiting for a lease or running) exist at once.
//!
//! Lifecycle rules, each one a hang that happened before:
//! - The books, not the actor, count batches: a batch's end is recorded by its token wherever
//!   the last job ends, so no completion is lost when the actor is replaced or its host stops.
//! - A batch waiting for a lease keeps its items in the books and can be cancelled: a stop
//!   answers them `Stopped` and the wait leaves the manager's queue.
//! - The actor lives on the manager's host; when that host stops, the actor's `Drop` stops the
//!   grinder (pending items answered `Stopped`), and `start` after a manager restart starts a
//!   new actor on the new host.
//! - One `max_wait` timer per grinder, armed only while a batch could start; enqueuers send at
//!   most one `Kick` at a time, and none while every batch slot is taken.
//! - `start` and `stop` are serialized; every stop returns within `stop_timeout`, after which
//!   items not yet on a lease are answered `Stopped` and running batches finish on their own.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, SpawnHandle};
use tokio::sync::{oneshot, Notify};

use crate::blocking;
use crate::error::LeaseError;
use crate::handle::{JobHandle, LeaseCore};
use crate::host::Engine;
use crate::messages::{Kick, StopGrinder};
use crate::registry::{LeaseParams, WaitMode};

/// How a grinder stops.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Run everything already queued, then stop (within the grinder's `stop_timeout`).
    Drain,
    /// Answer every item not yet on a lease with `Stopped`; batches already running finish.
    CancelPending,
}

/// Validated grinder settings.
#[derive(Debug, Clone)]
pub struct GrinderConfig {
    /// Pending items that start a batch.
    pub batch_size_threshold: usize,
    /// Longest an item waits before a batch starts anyway (`Duration::MAX`: never by age).
    pub max_wait: Duration,
    /// Soft lifetime of each batch's lease.
    pub lease_for: Duration,
    /// Batch leases are owned by `{owner_prefix}-batch-{n}`.
    pub owner_prefix: String,
    /// Most items that may wait; `enqueue` fails with `Unavailable` beyond it.
    pub max_pending: usize,
    /// Most batches (waiting for a lease or running) at once.
    pub max_concurrent_batches: usize,
    /// Longest a `stop` waits (for queued items to run, with `Drain`; for running batches).
    pub stop_timeout: Duration,
}

/// A snapshot of a grinder.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GrinderStats {
    /// Whether it accepts work.
    pub started: bool,
    /// Items waiting for a batch.
    pub pending: usize,
    /// Batches waiting for a lease or running now.
    pub in_flight_batches: usize,
    /// How long the oldest pending item has waited.
    pub oldest_wait: Option<Duration>,
    /// Batches completed.
    pub batches_run: u64,
    /// Items whose batch completed (with a value or an error).
    pub items_done: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Running,
    Draining,
    Stopped,
}

/// Where an item goes: onto a batch's lease, or back to its caller as an error.
type Launch<S> = Box<dyn FnOnce(Result<&Arc<BatchToken<S>>, LeaseError>) + Send>;

struct Item<S: 'static> {
    enqueued: Instant,
    launch: Launch<S>,
}

impl<S: 'static> Item<S> {
    fn fail(self, error: LeaseError) {
        (self.launch)(Err(error));
    }
}

/// A batch that has not finished.
enum Batch<S: 'static> {
    /// Waiting for its lease; its items stay here so that a stop can answer them. Dropping the
    /// sender wakes the waiting task, which then leaves the manager's queue.
    Acquiring {
        items: Vec<Item<S>>,
        _cancel: oneshot::Sender<()>,
    },
    /// On its lease; its items answer their callers themselves.
    Running,
}

struct Books<S: 'static> {
    state: State,
    pending: BTreeMap<u64, Item<S>>,
    next_item: u64,
    next_batch: u64,
    batches: HashMap<u64, Batch<S>>,
    batches_run: u64,
    items_done: u64,
    actor: Option<Addr<GrinderActor<S>>>,
    /// Which actor is current (an old one's `Drop` must not stop a newer one).
    incarnation: u64,
    /// A `Kick` is in the actor's mailbox: enqueuers need not send another.
    kick_queued: bool,
}

impl<S: 'static> Books<S> {
    fn slot_free(&self, max: usize) -> bool {
        self.batches.len() < max
    }

    /// Pending items and acquiring batches' items, taken out to be answered.
    fn take_waiting(&mut self) -> Vec<Item<S>> {
        let mut items: Vec<Item<S>> = std::mem::take(&mut self.pending).into_values().collect();
        let acquiring: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| matches!(b, Batch::Acquiring { .. }))
            .map(|(n, _)| *n)
            .collect();
        for n in acquiring {
            if let Some(Batch::Acquiring {
                items: mut held, ..
            }) = self.batches.remove(&n)
            {
                items.append(&mut held);
            }
        }
        items
    }
}

/// A grinder's shared state; `WorkGrinder` handles, the actor and batch tokens hold it.
pub struct Grinder<S: 'static> {
    engine: Arc<Engine<S>>,
    config: GrinderConfig,
    books: Mutex<Books<S>>,
    /// Serializes `start` and `stop`.
    lifecycle: tokio::sync::Mutex<()>,
    /// Room in the queue (async waiters).
    room: Notify,
    /// Room in the queue (blocking waiters; paired with `books`).
    room_blocking: Condvar,
    /// Pending items or batches changed (for `stop`).
    progress: Notify,
}

/// What `enqueue` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenFull {
    Refuse,
    Block,
}

impl<S: 'static> Grinder<S> {
    /// A grinder over `engine`'s leases (not started).
    pub fn new(engine: Arc<Engine<S>>, config: GrinderConfig) -> Arc<Self> {
        Arc::new(Self {
            engine,
            config,
            books: Mutex::new(Books {
                state: State::NotStarted,
                pending: BTreeMap::new(),
                next_item: 0,
                next_batch: 1,
                batches: HashMap::new(),
                batches_run: 0,
                items_done: 0,
                actor: None,
                incarnation: 0,
                kick_queued: false,
            }),
            lifecycle: tokio::sync::Mutex::new(()),
            room: Notify::new(),
            room_blocking: Condvar::new(),
            progress: Notify::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &GrinderConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Books<S>> {
        // No user code runs under this lock, so a poisoned lock still holds sane books.
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the grinder's actor on the manager's host. Idempotent; needs a started manager.
    /// Waits for a `stop` in progress to finish first.
    pub async fn start(self: &Arc<Self>) -> Result<(), LeaseError> {
        let _lifecycle = self.lifecycle.lock().await;
        {
            let books = self.lock();
            let live = books.actor.as_ref().is_some_and(Addr::connected);
            if books.state == State::Running && live {
                return Ok(());
            }
        }
        let incarnation = self.lock().incarnation + 1;
        let (tx, rx) = oneshot::channel();
        let grinder = Arc::clone(self);
        self.engine
            .run_on_host(Box::new(move || {
                let actor = GrinderActor {
                    grinder,
                    incarnation,
                    timer: None,
                };
                let _ = tx.send(actor.start());
            }))
            .await?;
        let actor = rx.await.map_err(|_| LeaseError::NotStarted)?;
        let mut books = self.lock();
        books.incarnation = incarnation;
        if let Some(old) = books.actor.replace(actor) {
            old.do_send(StopGrinder);
        }
        books.state = State::Running;
        books.kick_queued = false;
        drop(books);
        tracing::info!(manager = %self.engine.config().name_prefix, owner_prefix = %self.config.owner_prefix, "work grinder started");
        Ok(())
    }

    fn make_item<F, R>(&self, f: F, skip_if_abandoned: bool) -> (Item<S>, JobHandle<R>)
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, handle) = JobHandle::channel();
        let manager = Arc::clone(self.engine.name());
        let launch: Launch<S> = Box::new(move |batch| match batch {
            Ok(token) => {
                let Some(lease) = token.lease.as_ref() else {
                    return reply.fail(LeaseError::WorkerLost);
                };
                // The job holds the batch token until it ends: the last one releases the lease.
                let job = {
                    let token = Arc::clone(token);
                    move |_: &mut S| {
                        let _batch = token;
                        f()
                    }
                };
                lease.dispatch_reply(job, reply, skip_if_abandoned);
            }
            Err(e) => {
                reply.fail(e);
                // Possibly on the host thread, which must never panic: the item's captures are
                // user values with user destructors.
                crate::job::drop_quietly(f, &manager);
            }
        });
        let item = Item {
            enqueued: Instant::now(),
            launch,
        };
        (item, handle)
    }

    /// Adds the item in `f` (taking it only if there is room); `Unavailable` — or, for `Block`,
    /// waiting — when `max_pending` items already wait.
    fn add<F, R>(
        &self,
        f: &mut Option<F>,
        when_full: WhenFull,
        skip_if_abandoned: bool,
    ) -> Result<(u64, JobHandle<R>), LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut books = self.lock();
        loop {
            match books.state {
                State::Running => {}
                State::NotStarted => return Err(LeaseError::NotStarted),
                State::Draining | State::Stopped => return Err(LeaseError::Stopped),
            }
            if books.pending.len() < self.config.max_pending {
                break;
            }
            match when_full {
                WhenFull::Refuse => return Err(LeaseError::Unavailable),
                WhenFull::Block => {
                    books = self
                        .room_blocking
                        .wait(books)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        let Some(f) = f.take() else {
            return Err(LeaseError::Stopped);
        };
        let (item, handle) = self.make_item(f, skip_if_abandoned);
        let id = books.next_item;
        books.next_item += 1;
        books.pending.insert(id, item);
        let n = books.pending.len();
        // The first item arms the max_wait timer; reaching the threshold starts a batch. With
        // every slot taken there is nothing to do: the end of a batch looks again.
        if (n == 1 || n >= self.config.batch_size_threshold)
            && books.slot_free(self.config.max_concurrent_batches)
        {
            self.kick(&mut books);
        }
        Ok((id, handle))
    }

    /// Asks the actor to look at the books, unless a request is already in its mailbox.
    fn kick(&self, books: &mut Books<S>) {
        if books.kick_queued {
            return;
        }
        if let Some(actor) = &books.actor {
            books.kick_queued = true;
            actor.do_send(Kick);
        }
    }

    /// Adds an item now; `Unavailable` when `max_pending` items already wait. The handle may be
    /// dropped: the item still runs.
    pub fn enqueue<F, R>(&self, f: F) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.add(&mut Some(f), WhenFull::Refuse, false)
            .map(|(_, handle)| handle)
    }

    /// Adds an item, waiting (asynchronously) for room; returns its id (for [`cancel`]) and
    /// handle. If the handle is dropped before a worker starts the item, the item is skipped.
    ///
    /// [`cancel`]: Self::cancel
    pub async fn submit<F, R>(&self, f: F) -> Result<(u64, JobHandle<R>), LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut f = Some(f);
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so room freed between the look and the wait is seen.
            notified.as_mut().enable();
            match self.add(&mut f, WhenFull::Refuse, true) {
                Err(LeaseError::Unavailable) => notified.await,
                other => return other,
            }
        }
    }

    /// Removes a pending item (its submitter gave up); false if a batch already took it.
    pub fn cancel(&self, id: u64) -> bool {
        let removed = self.lock().pending.remove(&id);
        if removed.is_some() {
            self.freed_room();
        }
        removed.is_some()
    }

    /// Adds an item from a thread where blocking is allowed, waiting for room, and waits for
    /// its result. Refused with `BlockingOnRuntime` inside an async task or `block_on`.
    pub fn submit_blocking<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if blocking::inside_async_poll() {
            return Err(LeaseError::BlockingOnRuntime("submit_blocking"));
        }
        let (_, handle) = self.add(&mut Some(f), WhenFull::Block, false)?;
        handle.blocking_wait()
    }

    fn freed_room(&self) {
        self.room.notify_waiters();
        self.room_blocking.notify_all();
        self.progress.notify_waiters();
    }

    /// Stops the grinder (see [`StopMode`]) and waits — at most `stop_timeout` — until nothing
    /// is pending and no batch runs. Items still waiting for a lease at the deadline are
    /// answered `Stopped`; batches still running are left to finish on their own.
    pub async fn stop(&self, mode: StopMode) {
        // One deadline for the whole call, waiting behind another stop included: stops that
        // overlap each return within their own `stop_timeout`, not one after another.
        let deadline = Instant::now().checked_add(self.config.stop_timeout);
        if mode == StopMode::CancelPending {
            // Before waiting for a stop in progress: cancelling must not wait behind a drain.
            self.cancel_waiting();
        }
        let lifecycle = match deadline {
            None => Some(self.lifecycle.lock().await),
            Some(deadline) => tokio::time::timeout_at(deadline.into(), self.lifecycle.lock())
                .await
                .ok(),
        };
        let Some(_lifecycle) = lifecycle else {
            // Another stop (or a start) still holds the grinder: it finishes the job; this
            // call's time is up.
            self.timed_out();
            return;
        };
        {
            let mut books = self.lock();
            match (books.state, mode) {
                (State::NotStarted, _) => return,
                (State::Running | State::Draining, StopMode::Drain) => {
                    books.state = State::Draining;
                    self.kick(&mut books);
                }
                (State::Running | State::Draining, StopMode::CancelPending) => {
                    books.state = State::Stopped;
                }
                (State::Stopped, _) => {}
            }
        }
        if !self.wait_idle(deadline).await {
            self.timed_out();
        }
        let mut books = self.lock();
        books.state = State::Stopped;
        if let Some(actor) = books.actor.take() {
            actor.do_send(StopGrinder);
        }
        drop(books);
        tracing::info!(manager = %self.engine.config().name_prefix, owner_prefix = %self.config.owner_prefix, "work grinder stopped");
    }

    /// A stop's time ran out: items not yet on a lease are answered `Stopped`; running batches
    /// are left to finish.
    fn timed_out(&self) {
        let cancelled = self.cancel_waiting();
        let running = self.lock().batches.len();
        tracing::warn!(manager = %self.engine.config().name_prefix,
            owner_prefix = %self.config.owner_prefix,
            cancelled,
            running_batches = running,
            stop_timeout = ?self.config.stop_timeout,
            "work grinder stop timed out; items not on a lease answered Stopped, running batches left to finish"
        );
    }

    /// Waits until nothing is pending and no batch exists; false if the deadline passed first
    /// (`None`: no deadline).
    async fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        loop {
            let notified = self.progress.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let books = self.lock();
                if books.pending.is_empty() && books.batches.is_empty() {
                    return true;
                }
            }
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline.into(), notified)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
    }

    /// Stops accepting items and answers `Stopped` to every item not yet on a lease (pending,
    /// or in a batch waiting for one, whose wait is cancelled). Returns how many.
    fn cancel_waiting(&self) -> usize {
        let items = {
            let mut books = self.lock();
            if matches!(books.state, State::Running | State::Draining) {
                books.state = State::Stopped;
            }
            books.take_waiting()
        };
        let n = items.len();
        for item in items {
            item.fail(LeaseError::Stopped);
        }
        self.freed_room();
        n
    }

    /// Stops without waiting: items not yet on a lease are answered `Stopped` (last handle
    /// dropped).
    pub fn stop_detached(&self) {
        self.cancel_waiting();
        let mut books = self.lock();
        if let Some(actor) = books.actor.take() {
            actor.do_send(StopGrinder);
        }
    }

    /// The actor of `incarnation` is gone (its host stopped): if it was the current one, the
    /// grinder stops, answering what waits `Stopped`.
    fn actor_gone(&self, incarnation: u64) {
        {
            let mut books = self.lock();
            if books.incarnation != incarnation || books.actor.is_none() {
                return;
            }
            books.actor = None;
            books.kick_queued = false;
        }
        let cancelled = self.cancel_waiting();
        tracing::info!(manager = %self.engine.config().name_prefix, owner_prefix = %self.config.owner_prefix, cancelled, "the manager stopped; work grinder stopped");
    }

    /// A snapshot.
    pub fn stats(&self) -> GrinderStats {
        let books = self.lock();
        GrinderStats {
            started: books.state == State::Running && books.actor.is_some(),
            pending: books.pending.len(),
            in_flight_batches: books.batches.len(),
            oldest_wait: books.pending.values().next().map(|i| i.enqueued.elapsed()),
            batches_run: books.batches_run,
            items_done: books.items_done,
        }
    }

    /// Takes the items of every batch that should start now into new acquiring batches; returns
    /// their numbers and cancel receivers, and when the oldest item left waiting is due (if a
    /// batch slot is free to take it and its deadline can be represented).
    fn due_batches(&self) -> (Vec<(u64, oneshot::Receiver<()>)>, Option<Instant>) {
        let mut books = self.lock();
        books.kick_queued = false;
        let max = self.config.max_concurrent_batches;
        let mut due = Vec::new();
        while books.slot_free(max) && !books.pending.is_empty() {
            let oldest = books.pending.values().next().map(|i| i.enqueued);
            let waited_enough = oldest.is_some_and(|t| t.elapsed() >= self.config.max_wait);
            let full = books.pending.len() >= self.config.batch_size_threshold;
            if !(full || waited_enough || books.state == State::Draining) {
                break;
            }
            let items: Vec<Item<S>> = std::mem::take(&mut books.pending).into_values().collect();
            let n = books.next_batch;
            books.next_batch += 1;
            let (cancel, cancelled) = oneshot::channel();
            books.batches.insert(
                n,
                Batch::Acquiring {
                    items,
                    _cancel: cancel,
                },
            );
            due.push((n, cancelled));
        }
        let next_deadline = if books.slot_free(max) {
            books
                .pending
                .values()
                .next()
                .and_then(|i| i.enqueued.checked_add(self.config.max_wait))
        } else {
            None
        };
        drop(books);
        if !due.is_empty() {
            self.freed_room();
        }
        (due, next_deadline)
    }

    /// The batch got its lease (or failed to): its items, unless a stop took them meanwhile.
    fn batch_launching(&self, n: u64, succeeded: bool) -> Option<Vec<Item<S>>> {
        let mut books = self.lock();
        match books.batches.remove(&n) {
            Some(Batch::Acquiring { items, .. }) => {
                if succeeded {
                    books.batches.insert(n, Batch::Running);
                }
                Some(items)
            }
            Some(running) => {
                books.batches.insert(n, running);
                None
            }
            None => None,
        }
    }

    /// A batch ended (its lease released, or never got): free its slot and look again.
    fn batch_finished(&self, n: u64, items: u64) {
        let mut books = self.lock();
        books.batches.remove(&n);
        books.batches_run += 1;
        books.items_done += items;
        if !books.pending.is_empty() {
            self.kick(&mut books);
        }
        drop(books);
        self.progress.notify_waiters();
    }
}

/// Holds a batch's lease while its jobs run. Each job keeps a reference; when the last one is
/// gone the lease is released (dropped: never blocks) and the batch's slot freed — in the books,
/// so it does not depend on the actor still being there.
pub struct BatchToken<S: 'static> {
    lease: Option<LeaseCore<S>>,
    batch: u64,
    items: u64,
    grinder: Arc<Grinder<S>>,
}

impl<S: 'static> Drop for BatchToken<S> {
    fn drop(&mut self) {
        drop(self.lease.take());
        self.grinder.batch_finished(self.batch, self.items);
    }
}

/// Forms batches for one grinder and starts each on a lease. Lives on the manager's host System.
pub struct GrinderActor<S: 'static> {
    grinder: Arc<Grinder<S>>,
    incarnation: u64,
    /// The one `max_wait` timer: when it fires, and its handle.
    timer: Option<(Instant, SpawnHandle)>,
}

impl<S: 'static> GrinderActor<S> {
    fn form_batches(&mut self, ctx: &mut Context<Self>) {
        let (due, next_deadline) = self.grinder.due_batches();
        for (n, cancelled) in due {
            self.start_batch(n, cancelled);
        }
        match next_deadline {
            Some(at) if self.timer.as_ref().is_some_and(|(t, _)| *t == at) => {}
            Some(at) => {
                if let Some((_, old)) = self.timer.take() {
                    ctx.cancel_future(old);
                }
                let handle =
                    ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
                        act.timer = None;
                        act.form_batches(ctx);
                    });
                self.timer = Some((at, handle));
            }
            None => {
                if let Some((_, old)) = self.timer.take() {
                    ctx.cancel_future(old);
                }
            }
        }
    }

    /// Acquires the batch's lease on the host, then launches its items on it. The wait for the
    /// lease ends early when a stop cancels the batch (it drops the batch's cancel sender).
    fn start_batch(&self, n: u64, mut cancelled: oneshot::Receiver<()>) {
        let grinder = Arc::clone(&self.grinder);
        let owner = format!("{}-batch-{n}", grinder.config.owner_prefix);
        tracing::debug!(manager = %grinder.engine.config().name_prefix, batch = n, owner = %owner, "batch waiting for a lease");
        actix_rt::spawn(async move {
            let params = LeaseParams {
                owner: Some(owner),
                lease_for: grinder.config.lease_for,
            };
            let lease = match grinder.engine.begin_acquire(params, WaitMode::Forever) {
                Ok(Ok(lease)) => Ok(lease),
                Ok(Err(mut ticket)) => {
                    let outcome = std::future::poll_fn(|cx| {
                        if Pin::new(&mut cancelled).poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                        ticket.poll_wait(cx).map(Some)
                    })
                    .await;
                    match outcome {
                        Some(lease) => lease,
                        // Cancelled: dropping the ticket leaves the queue; the stop that
                        // cancelled us answered the items.
                        None => return,
                    }
                }
                Err(e) => Err(e),
            };
            let Some(items) = grinder.batch_launching(n, lease.is_ok()) else {
                return; // a stop took the items meanwhile; a lease we got is released on drop
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(manager = %grinder.engine.config().name_prefix, batch = n, error = %e, "batch could not get a lease; its items fail");
                    let count = items.len() as u64;
                    for item in items {
                        item.fail(e.clone());
                    }
                    grinder.batch_finished(n, count);
                    return;
                }
            };
            tracing::debug!(manager = %grinder.engine.config().name_prefix, batch = n, size = items.len(), lease_id = %lease.id(), "batch running");
            let token = Arc::new(BatchToken {
                items: items.len() as u64,
                lease: Some(lease),
                batch: n,
                grinder,
            });
            for item in items {
                (item.launch)(Ok(&token));
            }
        });
    }
}

impl<S: 'static> Actor for GrinderActor<S> {
    type Context = Context<Self>;
}

impl<S: 'static> Drop for GrinderActor<S> {
    fn drop(&mut self) {
        // Stopped by `stop` (then this is a no-op), or dropped with its host's System.
        self.grinder.actor_gone(self.incarnation);
    }
}

impl<S: 'static> Handler<Kick> for GrinderActor<S> {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.form_batches(ctx);
    }
}

impl<S: 'static> Handler<StopGrinder> for GrinderActor<S> {
    type Result = ();

    fn handle(&mut self, _: StopGrinder, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
